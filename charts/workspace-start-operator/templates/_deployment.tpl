{{/*
One operator Deployment, rendered for the default shard and once per entry of .Values.shards.
Context: .Values (for a shard: "wso.shardValues"), .Release, .Chart, and .Shard (the shard's
name; empty for the default Deployment, which takes the requests without the label).
*/}}
{{- define "wso.deployment" -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "wso.deploymentName" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "wso.labels" . | nindent 4 }}
    {{- with .Shard }}
    coder.com/shard: {{ . | quote }}
    {{- end }}
spec:
  replicas: {{ .Values.replicaCount }}
  revisionHistoryLimit: 5
  # Leader election is always on, so a surge pod (or any second pod, e.g. while scaling or on a
  # partitioned node) only stands by until the Lease is released: roll one pod at a time.
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  selector:
    matchLabels:
      {{- include "wso.podSelectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "wso.podSelectorLabels" . | nindent 8 }}
        {{- with .Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- if or .Values.coder.token .Values.podAnnotations }}
      annotations:
        {{- if .Values.coder.token }}
        checksum/coder-token: {{ .Values.coder.token | sha256sum }}
        {{- end }}
        {{- with .Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
    spec:
      serviceAccountName: {{ include "wso.serviceAccountName" . }}
      automountServiceAccountToken: true
      enableServiceLinks: false
      {{- with .Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
      securityContext:
        {{- toYaml .Values.podSecurityContext | nindent 8 }}
      containers:
        - name: operator
          image: {{ include "wso.image" . | quote }}
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          command:
            {{- toYaml .Values.command | nindent 12 }}
          args:
            - run
            {{- range .Values.extraArgs }}
            - {{ . | quote }}
            {{- end }}
          env:
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            - name: POD_NAMESPACE
              valueFrom:
                fieldRef:
                  fieldPath: metadata.namespace
            - name: CODER_URL
              value: {{ .Values.coder.url | quote }}
            - name: CODER_TOKEN_FILE
              value: /etc/coder/token/token
            - name: WATCH_NAMESPACES
              value: {{ join "," .Values.watchNamespaces | quote }}
            - name: WSO_TENANCY
              value: {{ .Values.tenancy.mode | quote }}
            {{- with .Shard }}
            - name: WSO_SHARD
              value: {{ . | quote }}
            {{- end }}
            - name: WSO_CONCURRENCY
              value: {{ .Values.concurrency | quote }}
            - name: WSO_FOLLOW_CONCURRENCY
              value: {{ .Values.followConcurrency | quote }}
            - name: WSO_WRITE_SLOTS
              value: {{ .Values.writeSlots | quote }}
            - name: WSO_WRITE_SLOTS_TOTAL
              value: {{ .Values.writeSlotsTotal | quote }}
            - name: WSO_LEADER_ELECT
              value: "true"
            - name: WSO_LEASE_NAME
              value: {{ .Values.leaderElection.leaseName | quote }}
            - name: WSO_METRICS_ADDR
              value: {{ printf "0.0.0.0:%d" (int .Values.metrics.port) | quote }}
            {{- if .Values.logs.enabled }}
            - name: WSO_LOGS_ADDR
              value: {{ printf "0.0.0.0:%d" (int .Values.logs.port) | quote }}
            - name: WSO_LOGS_AUDIENCES
              value: {{ include "wso.logs.audiences" . | quote }}
            {{- include "wso.portLimitsEnv" .Values.logs.limits | nindent 12 }}
            {{- with .Values.logs.tls.secretName }}
            {{- include "wso.portTLS" (dict "part" "env" "volume" "logs-tls" "secret" .) | nindent 12 }}
            {{- end }}
            {{- end }}
            - name: WSO_LOG_FORMAT
              value: {{ .Values.logging.format | quote }}
            - name: WSO_LOG_LEVEL
              value: {{ .Values.logging.level | quote }}
            - name: WSO_CODER_RPM
              value: {{ .Values.coder.requestsPerMinute | quote }}
            - name: WSO_CODER_ALLOWED_URLS
              value: {{ join "," (.Values.coder.allowedUrls | default list) | quote }}
            - name: WSO_CODER_CLIENT_CACHE_SIZE
              value: {{ .Values.coder.clientCache.maxClients | quote }}
            - name: WSO_CODER_CLIENT_IDLE_MS
              value: {{ mul .Values.coder.clientCache.idleSeconds 1000 | quote }}
            {{- if include "wso.caBundle" . }}
            - name: CODER_CA_FILE
              value: /etc/coder/ca/ca.crt
            {{- end }}
            {{- with .Values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: metrics
              containerPort: {{ .Values.metrics.port }}
              protocol: TCP
            {{- if .Values.logs.enabled }}
            - name: logs
              containerPort: {{ .Values.logs.port }}
              protocol: TCP
            {{- end }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: metrics
            {{- toYaml .Values.livenessProbe | nindent 12 }}
          readinessProbe:
            httpGet:
              path: /readyz
              port: metrics
            {{- toYaml .Values.readinessProbe | nindent 12 }}
          resources:
            {{- toYaml .Values.resources | nindent 12 }}
          securityContext:
            {{- toYaml .Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: coder-token
              mountPath: /etc/coder/token
              readOnly: true
            - name: tmp
              mountPath: /tmp
            {{- if include "wso.caBundle" . }}
            - name: coder-ca
              mountPath: /etc/coder/ca
              readOnly: true
            {{- end }}
            {{- if and .Values.logs.enabled .Values.logs.tls.secretName }}
            {{- include "wso.portTLS" (dict "part" "mount" "volume" "logs-tls") | nindent 12 }}
            {{- end }}
      volumes:
        - name: coder-token
          secret:
            secretName: {{ include "wso.tokenSecretName" . }}
            defaultMode: 288  # 0440
            items:
              - key: {{ include "wso.tokenSecretKey" . }}
                path: token
        - name: tmp
          emptyDir:
            sizeLimit: 16Mi
        {{- with include "wso.caBundle" . }}
        - name: coder-ca
          {{- . | nindent 10 }}
        {{- end }}
        {{- if and .Values.logs.enabled .Values.logs.tls.secretName }}
        {{- include "wso.portTLS" (dict "part" "volume" "volume" "logs-tls" "secret" .Values.logs.tls.secretName) | nindent 8 }}
        {{- end }}
      {{- with .Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with include "wso.affinity" . }}
      affinity:
        {{- . | nindent 8 }}
      {{- end }}
      {{- with .Values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}

{{/*
The volume source of coder.caBundle (a ConfigMap or a Secret, its key mounted as ca.crt), or
nothing when none is set.
*/}}
{{- define "wso.caBundle" -}}
{{- $ca := .Values.coder.caBundle | default dict -}}
{{- if and $ca.configMap $ca.secret -}}
{{- fail "coder.caBundle: set configMap or secret, not both" -}}
{{- end -}}
{{- if $ca.configMap -}}
configMap:
  name: {{ $ca.configMap }}
  items:
    - key: {{ $ca.key }}
      path: ca.crt
{{- else if $ca.secret -}}
secret:
  secretName: {{ $ca.secret }}
  defaultMode: 292  # 0444
  items:
    - key: {{ $ca.key }}
      path: ca.crt
{{- end -}}
{{- end -}}
