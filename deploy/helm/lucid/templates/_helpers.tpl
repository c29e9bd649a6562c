{{/*
Names and labels.
*/}}
{{- define "lucid.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lucid.fullname" -}}
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

{{- define "lucid.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lucid.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lucid.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lucid.labels" -}}
helm.sh/chart: {{ include "lucid.chart" . }}
{{ include "lucid.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lucid
{{- end }}

{{/* Labels of the serving pods, their Service and the monitors that select them. */}}
{{- define "lucid.serverSelectorLabels" -}}
{{ include "lucid.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "lucid.serverLabels" -}}
{{ include "lucid.labels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "lucid.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lucid.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "lucid.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "lucid.servedModelName" -}}
{{- default .Values.model.name .Values.model.servedModelName }}
{{- end }}

{{- define "lucid.url" -}}
{{- printf "http://%s.%s.svc:%d" (include "lucid.fullname" .) .Release.Namespace (int .Values.service.port) }}
{{- end }}

{{- define "lucid.hfTokenSecretName" -}}
{{- if .Values.hfToken.existingSecret }}
{{- .Values.hfToken.existingSecret }}
{{- else if .Values.hfToken.value }}
{{- printf "%s-hf-token" (include "lucid.fullname" .) }}
{{- end }}
{{- end }}

{{- define "lucid.modelCacheClaim" -}}
{{- default (printf "%s-model-cache" (include "lucid.fullname" .)) .Values.modelCache.persistence.existingClaim }}
{{- end }}

{{/*
Strategy-derived settings. strategies.json is generated from the strategy declarations
(deploy/helm/gen_strategies.py): each strategy's engine needs and cost factor. The rules
below are those of decoding/strategies/rules.py, which the server applies at start-up.
*/}}
{{- define "lucid.strategyData" -}}
{{- .Files.Get "strategies.json" }}
{{- end }}

{{- define "lucid.knownStrategies" -}}
{{- $data := (include "lucid.strategyData" . | fromJson).strategies }}
{{- keys $data | sortAlpha | join " " }}
{{- end }}

{{/* Cost factor of one strategy: the values override, else the declaration's. */}}
{{- define "lucid.costFactor" -}}
{{- $data := (include "lucid.strategyData" .root | fromJson).strategies }}
{{- if hasKey .root.Values.strategies.costFactor .name }}
{{- index .root.Values.strategies.costFactor .name | float64 }}
{{- else }}
{{- (index $data .name).costFactor | float64 }}
{{- end }}
{{- end }}

{{/* Enabled strategies whose declared engine need `key` equals `value`, comma-separated. */}}
{{- define "lucid.strategiesWith" -}}
{{- $data := (include "lucid.strategyData" .root | fromJson).strategies }}
{{- $out := list }}
{{- range .root.Values.strategies.enabled }}
{{- if eq (index (index $data .) $.key) $.value }}{{ $out = append $out . }}{{ end }}
{{- end }}
{{- join ", " $out }}
{{- end }}

{{/* Cost factor of the slowest enabled strategy. */}}
{{- define "lucid.slowestFactor" -}}
{{- $max := 1.0 }}
{{- range .Values.strategies.enabled }}
{{- $f := include "lucid.costFactor" (dict "root" $ "name" .) | float64 }}
{{- if gt $f $max }}{{ $max = $f }}{{ end }}
{{- end }}
{{- $max }}
{{- end }}

{{/* Name of the slowest enabled strategy (first one wins on a tie). */}}
{{- define "lucid.slowestStrategy" -}}
{{- $max := 0.0 }}{{ $name := "none" }}
{{- range .Values.strategies.enabled }}
{{- $f := include "lucid.costFactor" (dict "root" $ "name" .) | float64 }}
{{- if gt $f $max }}{{ $max = $f }}{{ $name = . }}{{ end }}
{{- end }}
{{- $name }}
{{- end }}

{{/* Seconds in-flight requests get to finish after SIGTERM. */}}
{{- define "lucid.drainSeconds" -}}
{{- mulf (float64 .Values.drain.maxRequestSeconds) (include "lucid.slowestFactor" . | float64) | ceil | int }}
{{- end }}

{{- define "lucid.terminationGracePeriodSeconds" -}}
{{- if .Values.drain.terminationGracePeriodSeconds }}
{{- .Values.drain.terminationGracePeriodSeconds | int }}
{{- else }}
{{- add (int .Values.drain.preStopSleepSeconds) (include "lucid.drainSeconds" . | int) (int .Values.drain.shutdownMarginSeconds) }}
{{- end }}
{{- end }}

{{/*
Refuse values the server cannot run. The schema already checks types and enums; these are
the rules that span several keys.
*/}}
{{- define "lucid.validate" -}}
{{- $known := splitList " " (include "lucid.knownStrategies" .) }}
{{- range .Values.strategies.enabled }}
{{- if not (has . $known) }}
{{- fail (printf "strategies.enabled: unknown strategy %q (known: %s)" . (join ", " $known)) }}
{{- end }}
{{- end }}
{{- if .Values.engine.speculativeConfig }}
{{- with include "lucid.strategiesWith" (dict "root" . "key" "speculativeDecoding" "value" false) }}
{{- fail (printf "engine.speculativeConfig is set, but strategies %s cannot run with speculative decoding: enable only strategies that can, or drop speculativeConfig" .) }}
{{- end }}
{{- end }}
{{- if not .Values.engine.prefixCaching }}
{{- with include "lucid.strategiesWith" (dict "root" . "key" "prefixCaching" "value" true) }}
{{- fail (printf "engine.prefixCaching is false, but strategies %s need prefix caching: set engine.prefixCaching=true or remove them from strategies.enabled" .) }}
{{- end }}
{{- end }}
{{- if gt (int .Values.engine.tensorParallelSize) 1 }}
{{- with include "lucid.strategiesWith" (dict "root" . "key" "tensorParallel" "value" false) }}
{{- fail (printf "engine.tensorParallelSize=%d, but strategies %s read every attention head (one rank holds a shard): use tensorParallelSize=1 or remove them from strategies.enabled" (int $.Values.engine.tensorParallelSize) .) }}
{{- end }}
{{- end }}
{{- range $name, $_ := .Values.admission.maxConcurrency }}
{{- if not (has $name $.Values.strategies.enabled) }}
{{- fail (printf "admission.maxConcurrency: strategy %q is not in strategies.enabled" $name) }}
{{- end }}
{{- end }}
{{- $managed := list "--model" "--host" "--port" "--strategies" "--served-model-name" "--revision" "--compilation-config" "-cc" "-O" "--enforce-eager" "--no-enforce-eager" "--enable-prefix-caching" "--no-enable-prefix-caching" "--speculative-config" "--shutdown-timeout" "--max-model-len" "--gpu-memory-utilization" "--tensor-parallel-size" "-tp" "--dtype" "--max-num-seqs" "--disable-access-log-for-endpoints" "--decoding-budget" "--decoding-max-concurrency" "--decoding-queue-timeout" "--decoding-fanout-limit" }}
{{- range .Values.engine.extraArgs }}
{{- $arg := . }}
{{- range $managed }}
{{- if or (eq $arg .) (hasPrefix (printf "%s=" .) $arg) (hasPrefix (printf "%s." .) $arg) (and (eq . "-O") (hasPrefix "-O" $arg)) }}
{{- fail (printf "engine.extraArgs: %q is managed by the chart; set the dedicated value (see VALUES.md)" $arg) }}
{{- end }}
{{- end }}
{{- end }}
{{- if gt (int .Values.engine.tensorParallelSize) (int .Values.gpu.count) }}
{{- fail (printf "engine.tensorParallelSize=%d needs at least that many GPUs, gpu.count=%d" (int .Values.engine.tensorParallelSize) (int .Values.gpu.count)) }}
{{- end }}
{{- if and .Values.autoscaling.keda.enabled .Values.autoscaling.hpa.enabled }}
{{- fail "autoscaling.keda and autoscaling.hpa both create a HorizontalPodAutoscaler: enable one" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled .Values.metrics.podMonitor.enabled }}
{{- fail "metrics.serviceMonitor and metrics.podMonitor would scrape every pod twice: enable one" }}
{{- end }}
{{- if and .Values.autoscaling.hpa.enabled (gt (int .Values.autoscaling.hpa.minReplicas) (int .Values.autoscaling.hpa.maxReplicas)) }}
{{- fail "autoscaling.hpa.minReplicas is larger than maxReplicas" }}
{{- end }}
{{- if and .Values.autoscaling.keda.enabled (gt (int .Values.autoscaling.keda.minReplicas) (int .Values.autoscaling.keda.maxReplicas)) }}
{{- fail "autoscaling.keda.minReplicas is larger than maxReplicas" }}
{{- end }}
{{- if and .Values.hfToken.existingSecret .Values.hfToken.value }}
{{- fail "hfToken: set existingSecret or value, not both" }}
{{- end }}
{{- end }}

{{/* Server arguments (the image's entry point runs `python -m server` with them). */}}
{{/* admission.maxConcurrency as the server's STRATEGY=N,... list (sorted keys). */}}
{{- define "lucid.caps" -}}
{{- $items := list }}
{{- range $k, $v := . }}
{{- $items = append $items (printf "%s=%d" $k (int $v)) }}
{{- end }}
{{- join "," $items }}
{{- end }}

{{- define "lucid.args" -}}
- --model
- {{ .Values.model.name | quote }}
{{- if .Values.model.revision }}
- --revision
- {{ .Values.model.revision | quote }}
{{- end }}
{{- if .Values.model.servedModelName }}
- --served-model-name
- {{ .Values.model.servedModelName | quote }}
{{- end }}
- --host
- "0.0.0.0"
- --port
- {{ .Values.service.port | quote }}
- --strategies
- {{ join "," .Values.strategies.enabled | quote }}
{{- with .Values.engine.maxModelLen }}
- --max-model-len
- {{ . | quote }}
{{- end }}
- --gpu-memory-utilization
- {{ .Values.engine.gpuMemoryUtilization | quote }}
- --tensor-parallel-size
- {{ .Values.engine.tensorParallelSize | quote }}
- --dtype
- {{ .Values.engine.dtype | quote }}
{{- with .Values.engine.maxNumSeqs }}
- --max-num-seqs
- {{ . | quote }}
{{- end }}
{{- if .Values.engine.enforceEager }}
- --enforce-eager
{{- else if ne .Values.engine.cudagraphMode "auto" }}
- --compilation-config
- {{ dict "cudagraph_mode" .Values.engine.cudagraphMode | toJson | quote }}
{{- end }}
{{- if not .Values.engine.prefixCaching }}
- --no-enable-prefix-caching
{{- end }}
{{- with .Values.engine.speculativeConfig }}
- --speculative-config
- {{ toJson . | quote }}
{{- end }}
{{- if .Values.drain.passShutdownTimeout }}
- --shutdown-timeout
- {{ include "lucid.drainSeconds" . | quote }}
{{- end }}
{{- if not (kindIs "invalid" .Values.admission.budget) }}
- --decoding-budget
- {{ .Values.admission.budget | quote }}
{{- end }}
{{- with .Values.admission.maxConcurrency }}
- --decoding-max-concurrency
- {{ include "lucid.caps" . | quote }}
{{- end }}
- --decoding-queue-timeout
- {{ .Values.admission.queueTimeoutSeconds | quote }}
{{- if not (kindIs "invalid" .Values.admission.fanoutLimit) }}
- --decoding-fanout-limit
- {{ .Values.admission.fanoutLimit | quote }}
{{- end }}
{{- with .Values.engine.quietAccessLogEndpoints }}
- --disable-access-log-for-endpoints
- {{ join "," . | quote }}
{{- end }}
{{- range .Values.engine.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* HF_TOKEN from the Secret, when one is configured. */}}
{{- define "lucid.hfTokenEnv" -}}
{{- with include "lucid.hfTokenSecretName" . }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.hfToken.secretKey }}
{{- end }}
{{- end }}

{{/* Label selector (PromQL) for this release's series, as Prometheus Operator labels them. */}}
{{- define "lucid.promSelector" -}}
namespace="{{ .Release.Namespace }}", pod=~"{{ include "lucid.fullname" . }}-[a-z0-9]+-[a-z0-9]+"
{{- end }}

{{/* Benchmark Job: the folder of this Job's results, and what every run container shares. */}}
{{- define "lucid.benchJobName" -}}
{{- printf "%s-bench-r%d" (include "lucid.fullname" . | trunc 40 | trimSuffix "-") (int .Release.Revision) }}
{{- end }}

{{- define "lucid.benchEnv" -}}
{{- $results := printf "%s/%s" .Values.benchmark.results.mountPath (include "lucid.benchJobName" .) -}}
- name: LUCID_URL
  value: {{ default (include "lucid.url" .) .Values.benchmark.targetUrl | quote }}
- name: LUCID_MODEL
  value: {{ include "lucid.servedModelName" . | quote }}
- name: LUCID_STRATEGIES
  value: {{ join "," .Values.strategies.enabled | quote }}
- name: RESULTS_DIR
  value: {{ $results | quote }}
- name: BENCH_OUT
  value: {{ printf "%s/bench.json" $results | quote }}
- name: COCO_IMAGES
  value: {{ .Values.benchmark.data.cocoImages | quote }}
- name: COCO_ANNOTATIONS
  value: {{ .Values.benchmark.data.cocoAnnotations | quote }}
{{- with .Values.benchmark.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "lucid.benchMounts" -}}
- name: results
  mountPath: {{ .Values.benchmark.results.mountPath }}
{{- if .Values.benchmark.data.existingClaim }}
- name: data
  mountPath: {{ .Values.benchmark.data.mountPath }}
  readOnly: true
{{- end }}
{{- with .Values.benchmark.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}
