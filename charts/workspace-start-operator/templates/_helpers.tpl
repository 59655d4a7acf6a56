{{/* Chart name, truncated to 63 characters. */}}
{{- define "wso.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release name, plus the chart name unless the release name contains it. */}}
{{- define "wso.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "wso.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wso.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wso.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "wso.labels" -}}
helm.sh/chart: {{ include "wso.chart" . }}
{{ include "wso.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: workspace-start-operator
{{- end -}}

{{- define "wso.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "wso.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "wso.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Labels of one Deployment's pods: the selector labels, plus coder.com/shard for a shard (context: .Shard). */}}
{{- define "wso.podSelectorLabels" -}}
{{ include "wso.selectorLabels" . }}
{{- with .Shard }}
coder.com/shard: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* The pod's affinity: .Values.affinity when set, else the podAntiAffinity preset (spreading one Deployment's pods). */}}
{{- define "wso.affinity" -}}
{{- if .Values.affinity -}}
{{- toYaml .Values.affinity -}}
{{- else if eq .Values.podAntiAffinity "preferred" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: {{ .Values.podAntiAffinityTopologyKey }}
        labelSelector:
          matchLabels:
            {{- include "wso.podSelectorLabels" . | nindent 12 }}
{{- else if eq .Values.podAntiAffinity "required" -}}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: {{ .Values.podAntiAffinityTopologyKey }}
      labelSelector:
        matchLabels:
          {{- include "wso.podSelectorLabels" . | nindent 10 }}
{{- end -}}
{{- end -}}

{{/* "true" in namespaced mode (watchNamespaces set). */}}
{{- define "wso.namespaced" -}}
{{- if .Values.watchNamespaces -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{/* Name of the Secret holding the operator-wide Coder token. */}}
{{- define "wso.tokenSecretName" -}}
{{- if .Values.coder.existingSecret -}}
{{- .Values.coder.existingSecret -}}
{{- else -}}
{{- printf "%s-coder-token" (include "wso.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "wso.tokenSecretKey" -}}
{{- if .Values.coder.existingSecret -}}{{ .Values.coder.existingSecretKey }}{{- else -}}token{{- end -}}
{{- end -}}

{{/* Namespaces in which the operator may get Secrets, as a JSON list. */}}
{{- define "wso.secretNamespaces" -}}
{{- $out := list -}}
{{- if .Values.rbac.allowCoderRefSecrets -}}
{{- if and .Values.watchNamespaces (not .Values.rbac.secretNamespaces) -}}
{{- $out = .Values.watchNamespaces -}}
{{- else -}}
{{- $out = .Values.rbac.secretNamespaces -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* Fails rendering on contradictory values. Included once, by the Deployment. */}}
{{- define "wso.validate" -}}
{{- if not .Values.coder.url -}}
{{- fail "coder.url is required (the Coder deployment URL, e.g. https://coder.example.com)" -}}
{{- end -}}
{{- if and .Values.coder.token .Values.coder.existingSecret -}}
{{- fail "set either coder.token or coder.existingSecret, not both" -}}
{{- end -}}
{{- if not (or .Values.coder.token .Values.coder.existingSecret) -}}
{{- fail "the Coder token is required: set coder.existingSecret (recommended) or coder.token" -}}
{{- end -}}
{{- if .Values.watchNamespaces -}}
{{- range .Values.rbac.secretNamespaces -}}
{{- if not (has . $.Values.watchNamespaces) -}}
{{- fail (printf "rbac.secretNamespaces: %s is not in watchNamespaces (in namespaced mode the operator only reads Secrets of watched namespaces)" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if not .Values.leaderElection.enabled -}}
{{- fail "leaderElection.enabled=false is not supported: a Deployment can run two pods at once (scaling, rolling updates, a pod on an unreachable node), and two operators without leader election would both start builds" -}}
{{- end -}}
{{- if and .Values.serviceMonitor.enabled (not .Values.metrics.service.enabled) -}}
{{- fail "serviceMonitor.enabled needs metrics.service.enabled" -}}
{{- end -}}
{{- $shards := list -}}
{{- range .Values.shards -}}
{{- if has .name $shards -}}
{{- fail (printf "shards: %s is listed twice (each shard is one Deployment and one Lease)" .name) -}}
{{- end -}}
{{- $shards = append $shards .name -}}
{{- $deployment := include "wso.shardDeploymentName" (dict "root" $ "name" .name) -}}
{{- if gt (len $deployment) 63 -}}
{{- fail (printf "shards: the Deployment name %s is longer than 63 characters; use a shorter shard name or fullnameOverride" $deployment) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Rules for requests, their status and Events (ClusterRole in cluster mode, Role per namespace otherwise). */}}
{{- define "wso.operatorRules" -}}
- apiGroups: ["coder.com"]
  resources: ["workspacestartrequests"]
  verbs: ["get", "list", "watch", "delete"]
- apiGroups: ["coder.com"]
  resources: ["workspacestartrequests/status"]
  verbs: ["get", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{- define "wso.secretRules" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end -}}

{{/* Name of one operator Deployment: the full name, plus -shard-<name> for a shard. */}}
{{- define "wso.deploymentName" -}}
{{- if .Shard -}}
{{- include "wso.shardDeploymentName" (dict "root" . "name" .Shard) -}}
{{- else -}}
{{- include "wso.fullname" . -}}
{{- end -}}
{{- end -}}

{{/* Name of a shard's Deployment. Context: (dict "root" $ "name" <shard name>). */}}
{{- define "wso.shardDeploymentName" -}}
{{- printf "%s-shard-%s" (include "wso.fullname" .root) .name -}}
{{- end -}}

{{/*
Values of one shard's Deployment, as YAML: the chart's values with the entry's overrides (all
but name) merged over them. A shard with its own coder.existingSecret does not use the token
Secret the chart creates. Context: (dict "root" $ "shard" <entry of .Values.shards>).
*/}}
{{- define "wso.shardValues" -}}
{{- $values := mergeOverwrite (deepCopy .root.Values) (omit .shard "name") -}}
{{- if dig "coder" "existingSecret" "" .shard -}}
{{- $_ := set $values.coder "token" "" -}}
{{- end -}}
{{- toYaml $values -}}
{{- end -}}

{{/*
Leases of the Deployments (leader election is always on), as a JSON list: leaderElection.leaseName for
the default shard, <leaseName>-shard-<name> for a shard (the operator derives it from --shard).
*/}}
{{- define "wso.leaseNames" -}}
{{- $names := list .Values.leaderElection.leaseName -}}
{{- range .Values.shards -}}
{{- $values := include "wso.shardValues" (dict "root" $ "shard" .) | fromYaml -}}
{{- $names = append $names (printf "%s-shard-%s" $values.leaderElection.leaseName .name) -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/*
Environment of the limits of a port whose callers send bearer tokens (the MCP endpoint, the
operator's build logs endpoint); context: the port's limits values.
*/}}
{{- define "wso.portLimitsEnv" -}}
- name: WSO_MAX_CALLS
  value: {{ .calls | quote }}
- name: WSO_MAX_CONNECTIONS
  value: {{ .connections | quote }}
- name: WSO_IDLE_TIMEOUT
  value: {{ .idleTimeout | quote }}
- name: WSO_BODY_TIMEOUT
  value: {{ .bodyTimeout | quote }}
- name: WSO_MAX_BODY_BYTES
  value: {{ .maxBodyBytes | int64 | quote }}
- name: WSO_TOKEN_CACHE_TTL
  value: {{ .tokenCacheTTL | quote }}
- name: WSO_REVIEWS_PER_MINUTE_PER_ADDRESS
  value: {{ .reviewsPerMinutePerAddress | quote }}
- name: WSO_REVIEW_BURST_PER_ADDRESS
  value: {{ .reviewBurstPerAddress | quote }}
{{- end -}}

{{/* Name of the Service of the operator's build logs endpoint (a DNS-1035 label). */}}
{{- define "wso.logs.serviceName" -}}
{{- printf "%s-logs" (include "wso.fullname" . | trunc 58 | trimSuffix "-") -}}
{{- end -}}

{{/*
Token audiences the logs endpoint accepts: logs.audiences; when empty and the MCP server is on,
the MCP audience (the MCP server forwards its callers' tokens); else none (the API server's own).
*/}}
{{- define "wso.logs.audiences" -}}
{{- if .Values.logs.audiences -}}
{{- join "," .Values.logs.audiences -}}
{{- else if and .Values.mcp.enabled .Values.mcp.audience -}}
{{- .Values.mcp.audience -}}
{{- end -}}
{{- end -}}

{{/* The MCP server's --logs-url: mcp.logsUrl, else the logs Service when logs.enabled. */}}
{{- define "wso.mcp.logsUrl" -}}
{{- if .Values.mcp.logsUrl -}}
{{- .Values.mcp.logsUrl -}}
{{- else if .Values.logs.enabled -}}
{{- $scheme := ternary "https" "http" (not (empty .Values.logs.tls.secretName)) -}}
{{- printf "%s://%s.%s.svc:%d/logs" $scheme (include "wso.logs.serviceName" .) .Release.Namespace (int .Values.logs.port) -}}
{{- end -}}
{{- end -}}

{{/* Non-empty when the MCP server trusts the ca.crt of logs.tls.secretName for --logs-url. */}}
{{- define "wso.mcp.logsCA" -}}
{{- if and .Values.logs.tls.secretName (include "wso.mcp.logsUrl" .) -}}true{{- end -}}
{{- end -}}

{{/*
TLS of a guarded port from a kubernetes.io/tls Secret; context: dict "secret" (its name) and
"volume" (the volume's name, also the directory /etc/wso/<volume>). "env", "mount" or "volume"
in "part" says which piece to render.
*/}}
{{- define "wso.portTLS" -}}
{{- if eq .part "env" -}}
- name: WSO_TLS_CERT_FILE
  value: /etc/wso/{{ .volume }}/tls.crt
- name: WSO_TLS_KEY_FILE
  value: /etc/wso/{{ .volume }}/tls.key
{{- else if eq .part "mount" -}}
- name: {{ .volume }}
  mountPath: /etc/wso/{{ .volume }}
  readOnly: true
{{- else -}}
- name: {{ .volume }}
  secret:
    secretName: {{ .secret }}
    defaultMode: 288  # 0440
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end -}}
{{- end -}}
