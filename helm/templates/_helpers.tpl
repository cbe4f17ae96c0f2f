{{/* Name of the chart. */}}
{{- define "weir.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart, unless the release already contains the chart name. */}}
{{- define "weir.fullname" -}}
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

{{- define "weir.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "weir.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "router"). */}}
{{- define "weir.selector" -}}
app.kubernetes.io/name: {{ include "weir.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "weir.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "weir.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "weir.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* checkov.io/skip annotations for the chart-wide justified checks, plus `extra`. */}}
{{- define "weir.checkovSkips" -}}
{{- $i := 0 -}}
{{- range concat .ctx.Values.checkovSkips (default list .extra) }}
{{- $i = add1 $i }}
checkov.io/skip{{ $i }}: {{ printf "%s=%s" .id .why | quote }}
{{- end -}}
{{- end -}}

{{/* Environment variable name for a recipient's secret: RECIPIENT_<NAME>_<WHAT>. */}}
{{- define "weir.recipientVar" -}}
{{- printf "RECIPIENT_%s_%s" (regexReplaceAll "[^A-Za-z0-9]" .name "_" | upper) (regexReplaceAll "[^A-Za-z0-9]" .what "_" | upper) -}}
{{- end -}}

{{/* The routers' URLs, one per StatefulSet pod, through the headless Service. */}}
{{- define "weir.routerUrls" -}}
{{- $full := include "weir.fullname" . -}}
{{- $urls := list -}}
{{- range $i, $_ := until (int .Values.router.replicas) -}}
{{- $urls = append $urls (printf "\"http://%s-router-%d.%s-router-headless.%s.svc:%d\"" $full $i $full $.Release.Namespace (int $.Values.router.port)) -}}
{{- end -}}
{{- join ", " $urls -}}
{{- end -}}

{{/* The first router's URL: where collectors and the proxy pull the catalog. */}}
{{- define "weir.routerServiceUrl" -}}
{{- printf "http://%s-router.%s.svc:%d" (include "weir.fullname" .) .Release.Namespace (int .Values.router.port) -}}
{{- end -}}

{{/* A TOML string. */}}
{{- define "weir.toml" -}}
{{- . | toJson -}}
{{- end -}}

{{/* Volumes and mounts every weir container has: a writable /tmp. */}}
{{- define "weir.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 6
readinessProbe:
  httpGet: {path: {{ default "/readyz" .readyPath }}, port: {{ .readyPort | default .port }}}
  periodSeconds: 5
  timeoutSeconds: 3
{{- end -}}

{{/* The Secret holding the internal endpoints' tokens (router-token, flight-token). */}}
{{- define "weir.tokensSecret" -}}
{{- default (printf "%s-tokens" (include "weir.fullname" .)) .Values.auth.existingSecret -}}
{{- end }}

{{/* ROUTER_TOKEN from the tokens Secret (router.token / collector.router_token). */}}
{{- define "weir.routerTokenEnv" -}}
- name: ROUTER_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ include "weir.tokensSecret" . }}, key: router-token}
{{- end }}

{{/* FLIGHT_TOKEN from the tokens Secret (loader.flight_token). */}}
{{- define "weir.flightTokenEnv" -}}
- name: FLIGHT_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ include "weir.tokensSecret" . }}, key: flight-token}
{{- end }}

{{/* Environment variable name for a Kafka option read from a Secret: KAFKA_<SETTING>. */}}
{{- define "weir.kafkaVar" -}}
{{- printf "KAFKA_%s" (regexReplaceAll "[^A-Za-z0-9]" . "_" | upper) -}}
{{- end -}}

{{/* The `kafka = { ... }` table: (dict "ctx" $ "router" true) adds the group. */}}
{{- define "weir.kafkaTable" -}}
{{- $k := .ctx.Values.kafka -}}
{ brokers = {{ include "weir.toml" $k.brokers }}, topic = {{ include "weir.toml" $k.topic }}
{{- if .router }}, group = {{ include "weir.toml" $k.group }}{{ end -}}
, partitions = {{ int $k.partitions }}
{{- if gt (int $k.replicationFactor) 0 }}, replication_factor = {{ int $k.replicationFactor }}{{ end -}}
{{- if or $k.options $k.optionSecrets }}, options = { {{- $first := true }}
{{- range $key, $v := $k.options }}{{ if not $first }},{{ end }}{{ $first = false }} {{ include "weir.toml" $key }} = {{ include "weir.toml" (toString $v) }}{{ end }}
{{- range $key, $_ := $k.optionSecrets }}{{ if not $first }},{{ end }}{{ $first = false }} {{ include "weir.toml" $key }} = "${ {{- include "weir.kafkaVar" $key -}} }"{{ end }} }
{{- end }} }
{{- end -}}

{{/* The env entries of the Kafka option Secrets, for every component that talks to Kafka. */}}
{{- define "weir.kafkaEnv" -}}
{{- if .Values.kafka.enabled }}
{{- range $key, $ref := .Values.kafka.optionSecrets }}
- name: {{ include "weir.kafkaVar" $key }}
  valueFrom:
    secretKeyRef: {name: {{ $ref.name }}, key: {{ $ref.key }}}
{{- end }}
{{- end }}
{{- end -}}
