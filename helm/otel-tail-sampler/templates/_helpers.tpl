{{/* Chart name, overridable. */}}
{{- define "ots.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource name prefix: release + chart name (release alone when it already holds the chart name). Room is left for the longest suffix ("-sampler-headless"). */}}
{{- define "ots.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 46 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 46 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 46 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ots.router.name" -}}{{ include "ots.fullname" . }}-router{{- end -}}
{{- define "ots.sampler.name" -}}{{ include "ots.fullname" . }}-sampler{{- end -}}
{{- define "ots.sampler.headlessName" -}}{{ include "ots.fullname" . }}-sampler-headless{{- end -}}
{{- define "ots.configName" -}}{{ include "ots.fullname" . }}-config{{- end -}}

{{/* Name of the Secret holding the gossip secret. */}}
{{- define "ots.secretName" -}}
{{- if .Values.cluster.existingSecret -}}
{{- .Values.cluster.existingSecret -}}
{{- else -}}
{{- include "ots.fullname" . }}-gossip
{{- end -}}
{{- end -}}

{{/* Key of the gossip secret inside its Secret. */}}
{{- define "ots.secretKey" -}}
{{- if .Values.cluster.existingSecret -}}{{ .Values.cluster.existingSecretKey }}{{- else -}}gossip-secret{{- end -}}
{{- end -}}

{{- define "ots.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "ots.labels" -}}
helm.sh/chart: {{ include "ots.chart" . }}
app.kubernetes.io/name: {{ include "ots.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: otel-tail-sampler
{{- end -}}

{{/* Selector labels of one component; call with (dict "ctx" $ "component" "router"). */}}
{{- define "ots.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ots.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All labels of one component's objects. */}}
{{- define "ots.componentLabels" -}}
{{ include "ots.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ots.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "ots.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ots.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Where the config file and the gossip secret are mounted. */}}
{{- define "ots.configDir" -}}/etc/otel-tail-sampler/config{{- end -}}
{{- define "ots.secretDir" -}}/etc/otel-tail-sampler/secret{{- end -}}
{{- define "ots.tlsDir" -}}/etc/otel-tail-sampler/tls{{- end -}}
{{- define "ots.exporterDir" -}}/etc/otel-tail-sampler/exporter{{- end -}}

{{/* The exporter section the chart's exporter credentials go to. */}}
{{- define "ots.exporterKind" -}}
{{- if hasKey (.Values.config.exporter | default dict) "otlphttp" -}}otlphttp{{- else -}}otlp{{- end -}}
{{- end -}}

{{/* Port of an `ip:port` endpoint string. */}}
{{- define "ots.portOf" -}}
{{- $parts := splitList ":" . -}}
{{- $port := last $parts -}}
{{- if not (regexMatch "^[0-9]+$" $port) -}}
{{- fail (printf "endpoint %q must be written as host:port" .) -}}
{{- end -}}
{{- $port -}}
{{- end -}}

{{/* The effective config (a dict): values' `config` over what the chart manages. */}}
{{- define "ots.configDict" -}}
{{- $gossipPort := include "ots.portOf" .Values.config.cluster.gossip_endpoint -}}
{{- $managed := dict "cluster" (dict
      "dns_seed" (printf "%s.%s.svc.%s:%s" (include "ots.sampler.headlessName" .) .Release.Namespace .Values.clusterDomain $gossipPort)
      "secret_file" (printf "%s/gossip-secret" (include "ots.secretDir" .))) -}}
{{- if .Values.sampler.policyReload.enabled -}}
{{- $_ := set $managed "sampler" (dict "config_watch_interval" .Values.sampler.policyReload.interval) -}}
{{- end -}}
{{- $tls := include "ots.tlsDir" . -}}
{{- with .Values.tls.receiver -}}
{{- if .existingSecret -}}
{{- $receiver := dict "cert_file" (printf "%s/receiver/tls.crt" $tls) "key_file" (printf "%s/receiver/tls.key" $tls) "min_version" .minVersion -}}
{{- if .clientAuth -}}
{{- $_ := set $receiver "client_ca_file" (printf "%s/receiver/ca.crt" $tls) -}}
{{- end -}}
{{- $_ := set $managed "receiver" (dict "tls" $receiver) -}}
{{- end -}}
{{- end -}}
{{- if .Values.tls.cluster.existingSecret -}}
{{- $serverName := .Values.tls.cluster.serverName | default (printf "%s-cluster" (include "ots.fullname" .)) -}}
{{- $_ := set $managed.cluster "tls" (dict "cert_file" (printf "%s/cluster/tls.crt" $tls) "key_file" (printf "%s/cluster/tls.key" $tls) "ca_file" (printf "%s/cluster/ca.crt" $tls) "server_name" $serverName) -}}
{{- end -}}
{{- $exporter := dict -}}
{{- with .Values.exporter.headersFromSecrets -}}
{{- $files := dict -}}
{{- range . -}}
{{- $_ := set $files .header (printf "%s/headers/%s" (include "ots.exporterDir" $) .header) -}}
{{- end -}}
{{- $_ := set $exporter "headers_from_files" $files -}}
{{- end -}}
{{- if .Values.exporter.tlsSecret -}}
{{- $exporterTls := dict "ca_file" (printf "%s/tls/ca.crt" (include "ots.exporterDir" .)) -}}
{{- if .Values.exporter.tlsClientCertificate -}}
{{- $_ := set $exporterTls "cert_file" (printf "%s/tls/tls.crt" (include "ots.exporterDir" .)) -}}
{{- $_ := set $exporterTls "key_file" (printf "%s/tls/tls.key" (include "ots.exporterDir" .)) -}}
{{- end -}}
{{- $_ := set $exporter "tls" $exporterTls -}}
{{- end -}}
{{- if $exporter -}}
{{- $_ := set $managed "exporter" (dict (include "ots.exporterKind" .) $exporter) -}}
{{- end -}}
{{- mustMergeOverwrite $managed (deepCopy .Values.config) | toYaml -}}
{{- end -}}

{{/* What the config checksum covers: the whole config, or, with
`sampler.policyReload.enabled`, everything but the policy set (which the samplers reload
from the updated file without a restart). */}}
{{- define "ots.configChecksumSource" -}}
{{- if .Values.sampler.policyReload.enabled -}}
{{- $config := include "ots.configDict" . | fromYaml -}}
{{- $sampler := get $config "sampler" | default dict -}}
{{- $_ := unset $sampler "policies" -}}
{{- $_ := unset $sampler "sample_on_first_match" -}}
{{- toYaml $config -}}
{{- else -}}
{{- include "ots.configYaml" . -}}
{{- end -}}
{{- end -}}

{{/* The config file text (what the ConfigMap holds). */}}
{{- define "ots.configYaml" -}}
{{ include "ots.configDict" . }}
{{- end -}}

{{/* Ports of the config's endpoints, by role. */}}
{{- define "ots.grpcPort" -}}{{ include "ots.portOf" .Values.config.receiver.grpc_endpoint }}{{- end -}}
{{- define "ots.httpPort" -}}{{ include "ots.portOf" .Values.config.receiver.http_endpoint }}{{- end -}}
{{- define "ots.forwardPort" -}}{{ include "ots.portOf" .Values.config.cluster.forward_endpoint }}{{- end -}}
{{- define "ots.gossipPort" -}}{{ include "ots.portOf" .Values.config.cluster.gossip_endpoint }}{{- end -}}
{{- define "ots.adminPort" -}}{{ include "ots.portOf" .Values.config.telemetry.admin_endpoint }}{{- end -}}

{{/* Pod annotations shared by both components: config checksum (a config change rolls the
pods; see ots.configChecksumSource), gossip secret checksum over its values, scrape annotations. */}}
{{- define "ots.podAnnotations" -}}
checksum/config: {{ include "ots.configChecksumSource" . | sha256sum | quote }}
checksum/secret: {{ printf "%s/%s/%s" .Values.cluster.secret .Values.cluster.existingSecret .Values.cluster.existingSecretKey | sha256sum | quote }}
{{- if .Values.prometheusScrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ include "ots.adminPort" . | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/* Environment every container gets: identity and address from the downward API. */}}
{{- define "ots.env" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end -}}

{{/* Container ports, probes and mounts shared by both components; call with (dict "ctx" $ "sampler" bool). */}}
{{- define "ots.containerCommon" -}}
{{- $ := .ctx -}}
ports:
  - name: otlp-grpc
    containerPort: {{ include "ots.grpcPort" $ }}
    protocol: TCP
  - name: otlp-http
    containerPort: {{ include "ots.httpPort" $ }}
    protocol: TCP
  {{- if .sampler }}
  - name: forward
    containerPort: {{ include "ots.forwardPort" $ }}
    protocol: TCP
  {{- end }}
  - name: gossip
    containerPort: {{ include "ots.gossipPort" $ }}
    protocol: UDP
  - name: admin
    containerPort: {{ include "ots.adminPort" $ }}
    protocol: TCP
readinessProbe:
  httpGet:
    path: /readyz
    port: admin
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 3
livenessProbe:
  httpGet:
    path: /healthz
    port: admin
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 6
startupProbe:
  httpGet:
    path: /healthz
    port: admin
  periodSeconds: 2
  failureThreshold: 90
securityContext:
  {{- toYaml $.Values.securityContext | nindent 2 }}
{{- end -}}

{{/* Volumes for the config and the gossip secret. */}}
{{- define "ots.volumes" -}}
- name: config
  configMap:
    name: {{ include "ots.configName" . }}
- name: gossip-secret
  secret:
    secretName: {{ include "ots.secretName" . }}
    defaultMode: 0440
    items:
      - key: {{ include "ots.secretKey" . }}
        path: gossip-secret
{{- with .Values.tls.receiver.existingSecret }}
- name: tls-receiver
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- with .Values.tls.cluster.existingSecret }}
- name: tls-cluster
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- if or .Values.exporter.headersFromSecrets .Values.exporter.tlsSecret }}
- name: exporter-credentials
  projected:
    defaultMode: 0440
    sources:
      {{- range .Values.exporter.headersFromSecrets }}
      - secret:
          name: {{ .secretName }}
          items:
            - key: {{ .key }}
              path: headers/{{ .header }}
      {{- end }}
      {{- with .Values.exporter.tlsSecret }}
      - secret:
          name: {{ . }}
          items:
            - {key: ca.crt, path: tls/ca.crt}
            {{- if $.Values.exporter.tlsClientCertificate }}
            - {key: tls.crt, path: tls/tls.crt}
            - {key: tls.key, path: tls/tls.key}
            {{- end }}
      {{- end }}
{{- end }}
{{- end -}}

{{- define "ots.volumeMounts" -}}
- name: config
  mountPath: {{ include "ots.configDir" . }}
  readOnly: true
- name: gossip-secret
  mountPath: {{ include "ots.secretDir" . }}
  readOnly: true
{{- if .Values.tls.receiver.existingSecret }}
- name: tls-receiver
  mountPath: {{ include "ots.tlsDir" . }}/receiver
  readOnly: true
{{- end }}
{{- if .Values.tls.cluster.existingSecret }}
- name: tls-cluster
  mountPath: {{ include "ots.tlsDir" . }}/cluster
  readOnly: true
{{- end }}
{{- if or .Values.exporter.headersFromSecrets .Values.exporter.tlsSecret }}
- name: exporter-credentials
  mountPath: {{ include "ots.exporterDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* Scheduling fields of a component's values. */}}
{{- define "ots.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* Bytes in a Kubernetes memory quantity ("2Gi", "512Mi", "1G", "1048576"), as a float. */}}
{{- define "ots.quantityBytes" -}}
{{- $q := toString . -}}
{{- $number := regexFind "^[0-9.]+" $q -}}
{{- $suffix := trimPrefix $number $q -}}
{{- $units := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- if or (not $number) (not (hasKey $units $suffix)) -}}
{{- fail (printf "memory quantity %q: expected a number with an optional unit (Ki, Mi, Gi, Ti, k, M, G, T)" $q) -}}
{{- end -}}
{{- mulf (float64 $number) (get $units $suffix) -}}
{{- end -}}

{{/*
Fails the render when a component's memory limit cannot hold what its configuration lets
it use: bytes held by requests (`receiver.max_buffered_bytes`: bodies, inflated gzip and
decoded size), for samplers the buffer's
memtables (`sampler.buffer_memory_bytes`), and a fixed allowance for everything else
(index, requests being read, export batches, the runtime). Takes the component name, its
resources, and the allowance in MiB.
*/}}
{{- define "ots.checkMemory" -}}
{{- $limit := dig "limits" "memory" "" (.resources | default dict) -}}
{{- if $limit -}}
{{- $mib := 1048576.0 -}}
{{- $config := .ctx.Values.config -}}
{{- $buffered := dig "receiver" "max_buffered_bytes" 268435456 $config | float64 -}}
{{- $need := addf $buffered (mulf .allowanceMiB $mib) -}}
{{- $parts := printf "receiver.max_buffered_bytes (%d MiB)" (divf $buffered $mib | int) -}}
{{- if eq .component "sampler" -}}
{{- $memtables := dig "sampler" "buffer_memory_bytes" 67108864 $config | float64 -}}
{{- $need = addf $need $memtables -}}
{{- $parts = printf "%s + sampler.buffer_memory_bytes (%d MiB)" $parts (divf $memtables $mib | int) -}}
{{- end -}}
{{- $have := include "ots.quantityBytes" $limit | float64 -}}
{{- if lt $have $need -}}
{{- fail (printf "%s.resources.limits.memory is %s, but %s + %d MiB for the rest need %d MiB: raise the limit or lower the budgets" .component (toString $limit) $parts (int .allowanceMiB) (divf $need $mib | ceil | int)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
