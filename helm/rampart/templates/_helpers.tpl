{{/*
Rampart's named templates.

The rampart.sidecar.* templates are the sidecar as a building block: this chart's own
Deployment uses them, and so can any other chart that has this chart as a dependency (its
named templates are shared with the parent). Every one of them takes the same context:

    {{- $rampart := dict "Values" .Values.rampart "Release" .Release }}

in a parent chart (where .Values.rampart holds this chart's values, defaults included), or
"." in this chart. They read only .Values and .Release, plus .Chart.AppVersion when present
(a parent chart must set rampart.rampart.image.tag). See examples/consumer/ and
docs/deploy.md.

  rampart.sidecar.podLabels       labels for the pod template (the PodMonitor selects them)
  rampart.sidecar.podAnnotations  prometheus.io/* scrape annotations (when enabled)
  rampart.sidecar.initContainers  the sidecar as a native sidecar, or nothing
  rampart.sidecar.containers      the sidecar as a plain container, or nothing
  rampart.sidecar.container       the container itself (one list item)
  rampart.sidecar.volumes         its volumes: config, state_dir, admin tokens
  rampart.sidecar.configMap       the ConfigMap object with rampart.yaml
  rampart.sidecar.adminSecret     the Secret with the admin tokens file, when the chart makes it
*/}}

{{/* Fullname: RELEASE-rampart, or RELEASE when it already names rampart; 63 chars at most. */}}
{{- define "rampart.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default "rampart" .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "rampart.name" -}}
{{- default "rampart" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "rampart.labels" -}}
{{ include "rampart.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rampart
{{- with .Chart }}
helm.sh/chart: {{ printf "%s-%s" .Name .Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .AppVersion | quote }}
{{- end }}
{{- end -}}

{{- define "rampart.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rampart.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "rampart.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "rampart.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* image: REPOSITORY:TAG, the tag defaulting to the chart's appVersion. */}}
{{- define "rampart.image" -}}
{{- $image := .Values.rampart.image -}}
{{- $tag := $image.tag -}}
{{- if not $tag -}}{{- with .Chart -}}{{- $tag = .AppVersion -}}{{- end -}}{{- end -}}
{{- if not $tag -}}{{- fail "rampart.image.tag: set it (no chart appVersion to default to here)" -}}{{- end -}}
{{- printf "%s:%s" $image.repository (toString $tag) -}}
{{- end -}}

{{- define "rampart.appImage" -}}
{{- $tag := .Values.app.image.tag | default .Chart.AppVersion -}}
{{- printf "%s:%s" .Values.app.image.repository (toString $tag) -}}
{{- end -}}

{{/* Paths inside the sidecar. */}}
{{- define "rampart.configDir" -}}/etc/rampart/config{{- end -}}
{{- define "rampart.configFile" -}}{{ include "rampart.configDir" . }}/rampart.yaml{{- end -}}
{{- define "rampart.adminDir" -}}/etc/rampart/admin{{- end -}}
{{- define "rampart.stateDir" -}}/var/lib/rampart{{- end -}}

{{- define "rampart.configMapName" -}}{{ include "rampart.fullname" . }}{{- end -}}
{{- define "rampart.adminSecretName" -}}
{{- .Values.rampart.admin.existingSecret | default (printf "%s-admin" (include "rampart.fullname" .)) -}}
{{- end -}}

{{/* host:port, with brackets for IPv6 literals. */}}
{{- define "rampart.hostPort" -}}
{{- $host := index . 0 | toString -}}
{{- if contains ":" $host -}}[{{ $host }}]:{{ index . 1 }}{{- else -}}{{ $host }}:{{ index . 1 }}{{- end -}}
{{- end -}}

{{/*
rampart.yaml: the listeners, state_dir, threads and admin fields from the chart's values, then
the routing config (rampart.config) as given. values.schema.json keeps those chart-owned fields
out of rampart.config, so no key appears twice (Rampart rejects duplicate keys).
*/}}
{{- define "rampart.config" -}}
{{- $r := .Values.rampart -}}
{{- $ports := list (int $r.ports.proxy) (int $r.ports.metrics) -}}
{{- if $r.admin.enabled -}}{{- $ports = append $ports (int $r.admin.port) -}}{{- end -}}
{{- if ne (len $ports) (len (uniq $ports)) -}}
{{- fail (printf "rampart.ports.proxy, rampart.ports.metrics and rampart.admin.port must differ (got %v)" $ports) -}}
{{- end -}}
# Rendered by the rampart Helm chart from its values (rampart.config and rampart.ports).
version: 1
listen: {{ include "rampart.hostPort" (list $r.bindAddress $r.ports.proxy) }}
metrics_listen: {{ include "rampart.hostPort" (list $r.bindAddress $r.ports.metrics) }}
{{- if $r.admin.enabled }}
admin_listen: {{ include "rampart.hostPort" (list $r.admin.address $r.admin.port) }}
admin_tokens_file: {{ include "rampart.adminDir" . }}/{{ $r.admin.secretKey }}
{{- end }}
state_dir: {{ include "rampart.stateDir" . }}
{{- if $r.threads }}
threads: {{ $r.threads }}
{{- end }}
{{ toYaml $r.config }}
{{- end -}}

{{- define "rampart.sidecar.podLabels" -}}
rampart.dev/sidecar: {{ include "rampart.fullname" . }}
{{- end -}}

{{- define "rampart.sidecar.podAnnotations" -}}
{{- if .Values.metrics.scrapeAnnotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.rampart.ports.metrics | quote }}
prometheus.io/path: /metrics
{{- end -}}
{{- end -}}

{{- define "rampart.sidecar.container" -}}
{{- $r := .Values.rampart -}}
- name: rampart
  image: {{ include "rampart.image" . }}
  imagePullPolicy: {{ $r.image.pullPolicy }}
  {{- if $r.nativeSidecar }}
  restartPolicy: Always
  {{- end }}
  args: ["run", "-c", {{ include "rampart.configFile" . | quote }}]
  env:
    - name: RUST_LOG
      value: {{ $r.logLevel | quote }}
    - name: RAMPART_LOG_FORMAT
      value: {{ $r.logFormat | quote }}
    {{- with $r.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: rampart-http
      containerPort: {{ $r.ports.proxy }}
      protocol: TCP
    - name: rampart-metrics
      containerPort: {{ $r.ports.metrics }}
      protocol: TCP
  startupProbe:
    httpGet: {path: /readyz, port: rampart-metrics}
    {{- toYaml $r.probes.startup | nindent 4 }}
  readinessProbe:
    httpGet: {path: /readyz, port: rampart-metrics}
    {{- toYaml $r.probes.readiness | nindent 4 }}
  livenessProbe:
    httpGet: {path: /healthz, port: rampart-metrics}
    {{- toYaml $r.probes.liveness | nindent 4 }}
  {{- with $r.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $r.securityContext | nindent 4 }}
  volumeMounts:
    - name: rampart-config
      mountPath: {{ include "rampart.configDir" . }}
      readOnly: true
    - name: rampart-state
      mountPath: {{ include "rampart.stateDir" . }}
    {{- if $r.admin.enabled }}
    - name: rampart-admin
      mountPath: {{ include "rampart.adminDir" . }}
      readOnly: true
    {{- end }}
{{- end -}}

{{- define "rampart.sidecar.initContainers" -}}
{{- if .Values.rampart.nativeSidecar -}}
{{ include "rampart.sidecar.container" . }}
{{- end -}}
{{- end -}}

{{- define "rampart.sidecar.containers" -}}
{{- if not .Values.rampart.nativeSidecar -}}
{{ include "rampart.sidecar.container" . }}
{{- end -}}
{{- end -}}

{{/* The config volume is the whole ConfigMap as a directory: never a subPath, which would
freeze the file at pod start and defeat hot reload. */}}
{{- define "rampart.sidecar.volumes" -}}
{{- $r := .Values.rampart -}}
- name: rampart-config
  configMap:
    name: {{ include "rampart.configMapName" . }}
    defaultMode: 0444
- name: rampart-state
  emptyDir:
    {{- with $r.stateDir.medium }}
    medium: {{ . }}
    {{- end }}
    {{- with $r.stateDir.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- if $r.admin.enabled }}
- name: rampart-admin
  secret:
    secretName: {{ include "rampart.adminSecretName" . }}
    defaultMode: 0440
    items:
      - key: {{ $r.admin.secretKey }}
        path: {{ $r.admin.secretKey }}
{{- end }}
{{- end -}}

{{- define "rampart.sidecar.configMap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "rampart.configMapName" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "rampart.labels" . | nindent 4 }}
data:
  rampart.yaml: |
    {{- include "rampart.config" . | nindent 4 }}
{{- end -}}

{{- define "rampart.sidecar.adminSecret" -}}
{{- $a := .Values.rampart.admin -}}
{{- if and $a.enabled (not $a.existingSecret) -}}
apiVersion: v1
kind: Secret
metadata:
  name: {{ include "rampart.adminSecretName" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "rampart.labels" . | nindent 4 }}
type: Opaque
stringData:
  {{ $a.secretKey }}: |
    {{- $a.tokensFile | nindent 4 }}
{{- end -}}
{{- end -}}
