{{/* The chart name, or nameOverride. */}}
{{- define "agentrun-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's resources: fullnameOverride, or <release>-<name>, or just <release> when the
release name already contains the chart name. Truncated to 63 characters (a DNS label).
*/}}
{{- define "agentrun-operator.fullname" -}}
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

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "agentrun-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the release besides the selector labels. */}}
{{- define "agentrun-operator.commonLabels" -}}
helm.sh/chart: {{ include "agentrun-operator.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agentrun-operator
{{- end }}

{{/* Labels of the operator's objects (and of the release's shared ones, such as the CRD). */}}
{{- define "agentrun-operator.labels" -}}
{{ include "agentrun-operator.selectorLabels" . }}
{{ include "agentrun-operator.commonLabels" . }}
{{- end }}

{{/* Labels of the stream gateway's objects. */}}
{{- define "agentrun-operator.gatewayLabels" -}}
{{ include "agentrun-operator.gatewaySelectorLabels" . }}
{{ include "agentrun-operator.commonLabels" . }}
{{- end }}

{{/* Labels that select the operator's pods; never change them in an upgrade (Deployment selectors are immutable). */}}
{{- define "agentrun-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentrun-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels that select the stream gateway's pods. */}}
{{- define "agentrun-operator.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ include "agentrun-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: stream-gateway
{{- end }}

{{/* The stream gateway's name: its Deployment, Service, ServiceAccount, RBAC and route objects. */}}
{{- define "agentrun-operator.gatewayName" -}}
{{- printf "%s-stream-gateway" (include "agentrun-operator.fullname" . | trunc 48 | trimSuffix "-") }}
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "agentrun-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agentrun-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference; the tag defaults to the chart's appVersion. Call with (list .Values.image .Chart.AppVersion). */}}
{{- define "agentrun-operator.image" -}}
{{- $image := index . 0 }}
{{- printf "%s:%s" $image.repository (default (index . 1) $image.tag) }}
{{- end }}

{{/* The leader election Lease's name (in the release namespace), given to the operator as AGENTRUN_LEADER_ELECTION_LEASE. */}}
{{- define "agentrun-operator.leaseName" -}}
{{- include "agentrun-operator.fullname" . }}
{{- end }}

{{/* The namespace of the operator's AgentRuns' RBAC: watchNamespace, else the release's. */}}
{{- define "agentrun-operator.watchNamespaceOrRelease" -}}
{{- default .Release.Namespace .Values.watchNamespace }}
{{- end }}

{{/* The public base URL of run streams: operator.streamBaseURL, else the stream gateway route's host, else empty. */}}
{{- define "agentrun-operator.streamBaseURL" -}}
{{- if .Values.operator.streamBaseURL }}
{{- .Values.operator.streamBaseURL }}
{{- else if and .Values.gateway.enabled .Values.gateway.route.enabled .Values.gateway.route.host }}
{{- printf "%s://%s" (ternary "https" "http" (ne .Values.gateway.route.tlsSecretName "")) .Values.gateway.route.host }}
{{- end }}
{{- end }}

{{/* Egress rules to CIDRs: call with a list of {cidr, except, ports}; empty ports allow any port. */}}
{{- define "agentrun-operator.cidrEgress" -}}
{{- range . }}
- to:
    - ipBlock:
        cidr: {{ .cidr }}
        {{- with .except }}
        except:
          {{- toYaml . | nindent 10 }}
        {{- end }}
  {{- with .ports }}
  ports:
    {{- range . }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
  {{- end }}
{{- end }}
{{- end }}
