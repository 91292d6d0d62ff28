{{/* Names and labels shared by every manifest. */}}

{{- define "sdfarm.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sdfarm.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "sdfarm.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sdfarm.coordinator" -}}{{ include "sdfarm.fullname" . }}-coordinator{{- end -}}
{{- define "sdfarm.configSecret" -}}{{ .Values.config.existingSecret | default (printf "%s-config" (include "sdfarm.fullname" .)) }}{{- end -}}
{{- define "sdfarm.tokenSecret" -}}{{ .Values.tokens.existingSecret | default (printf "%s-tokens" (include "sdfarm.fullname" .)) }}{{- end -}}

{{/* gRPC address workers dial, through the coordinator Service. */}}
{{- define "sdfarm.coordinatorGrpc" -}}
http://{{ include "sdfarm.coordinator" . }}.{{ .Release.Namespace }}.svc:{{ .Values.coordinator.grpcPort }}
{{- end -}}

{{/* HTTP base URL of the coordinator Service: /metrics and /scaling. */}}
{{- define "sdfarm.coordinatorHttp" -}}
http://{{ include "sdfarm.coordinator" . }}.{{ .Release.Namespace }}.svc:{{ .Values.coordinator.httpPort }}
{{- end -}}

{{- define "sdfarm.image" -}}
{{- $ := index . 0 -}}{{- $repo := index . 1 -}}
{{ printf "%s/%s:%s" $.Values.image.registry $repo ($.Values.image.tag | default $.Chart.AppVersion) }}
{{- end -}}

{{/* Environment every sdfarm container gets: the config Secret and the token Secret. */}}
{{- define "sdfarm.envFrom" -}}
- secretRef:
    name: {{ include "sdfarm.configSecret" . }}
- secretRef:
    name: {{ include "sdfarm.tokenSecret" . }}
{{- end -}}

{{- define "sdfarm.pullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A pool's labels as SDFARM_LABELS: key=value,key=value (sorted by key). */}}
{{- define "sdfarm.poolLabels" -}}
{{- $pairs := list -}}
{{- range $k, $v := . -}}{{- $pairs = append $pairs (printf "%s=%v" $k $v) -}}{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
