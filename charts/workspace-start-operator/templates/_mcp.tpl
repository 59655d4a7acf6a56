{{/* Name of the MCP server's objects: the full name plus "-mcp" (at most 63 characters). */}}
{{- define "wso.mcp.fullname" -}}
{{- printf "%s-mcp" (include "wso.fullname" . | trunc 59 | trimSuffix "-") -}}
{{- end -}}

{{/* Pod labels of the MCP server: distinct from the controller's, so neither Deployment, Service
nor NetworkPolicy of one selects the other's pods. */}}
{{- define "wso.mcp.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-mcp" (include "wso.name" . | trunc 59 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "wso.mcp.labels" -}}
{{ include "wso.labels" . }}
app.kubernetes.io/component: mcp
{{- end -}}

{{- define "wso.mcp.serviceAccountName" -}}
{{- if .Values.mcp.serviceAccount.create -}}
{{- default (include "wso.mcp.fullname" .) .Values.mcp.serviceAccount.name -}}
{{- else -}}
{{- required "mcp.serviceAccount.name is required when mcp.serviceAccount.create is false" .Values.mcp.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* What the MCP server may do with requests: create them for callers, read and watch them. */}}
{{- define "wso.mcp.requestRules" -}}
- apiGroups: ["coder.com"]
  resources: ["workspacestartrequests"]
  verbs: ["get", "list", "watch", "create"]
{{- end -}}
