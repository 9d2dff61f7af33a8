{{/* Names and labels, as `helm create` makes them. */}}
{{- define "kiln.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kiln.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kiln.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kiln.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kiln.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kiln.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kiln.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kiln.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the API key: the user's, or the one this chart creates. */}}
{{- define "kiln.apiKeySecret" -}}
{{- default (printf "%s-api-key" (include "kiln.fullname" .)) .Values.apiKey.existingSecret }}
{{- end }}

{{- define "kiln.modelsClaim" -}}
{{- default (printf "%s-models" (include "kiln.fullname" .)) .Values.models.persistence.existingClaim }}
{{- end }}

{{- define "kiln.imagesClaim" -}}
{{- default (printf "%s-images" (include "kiln.fullname" .)) .Values.imageStore.existingClaim }}
{{- end }}

{{/* The PromQL KEDA scales on: jobs accepted and not started, summed over this release's pods. */}}
{{- define "kiln.scaleQuery" -}}
{{- if .Values.autoscaling.keda.prometheus.query }}
{{- tpl .Values.autoscaling.keda.prometheus.query . }}
{{- else }}
{{- printf "sum(kiln_queue_waiting{namespace=%q,service=%q})" .Release.Namespace (include "kiln.fullname" .) }}
{{- end }}
{{- end }}

{{/* terminationGracePeriodSeconds: the preStop sleep, the drain grace, and a margin. */}}
{{- define "kiln.terminationGrace" -}}
{{- add (int .Values.preStopSleepSeconds) (int .Values.drainGraceSeconds) (int .Values.terminationGraceMarginSeconds) }}
{{- end }}
