{{/* rampart-injector's named templates. */}}

{{- define "rampart-injector.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default "rampart-injector" .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "rampart-injector.selectorLabels" -}}
app.kubernetes.io/name: {{ default "rampart-injector" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "rampart-injector.labels" -}}
{{ include "rampart-injector.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rampart
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "rampart-injector.tlsSecret" -}}{{ include "rampart-injector.fullname" . }}-tls{{- end -}}

{{/* Whether cert-manager provides the certificate. */}}
{{- define "rampart-injector.certManager" -}}
{{- if eq .Values.tls.mode "certManager" -}}true
{{- else if and (eq .Values.tls.mode "auto") (.Capabilities.APIVersions.Has "cert-manager.io/v1") -}}true
{{- end -}}
{{- end -}}

{{/* The cluster version handed to the injector: the value, else Helm's view of the cluster. */}}
{{- define "rampart-injector.kubeVersion" -}}
{{- .Values.kubeVersion | default .Capabilities.KubeVersion.Version -}}
{{- end -}}

{{- define "rampart-injector.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString (.Values.image.tag | default .Chart.AppVersion)) -}}
{{- end -}}

{{- define "rampart-injector.sidecarImage" -}}
{{- printf "%s:%s" .Values.sidecarImage.repository (toString (.Values.sidecarImage.tag | default .Chart.AppVersion)) -}}
{{- end -}}
