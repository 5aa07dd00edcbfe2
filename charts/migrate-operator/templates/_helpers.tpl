{{/* Chart name, or nameOverride. */}}
{{- define "migrate-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name used for every object: fullnameOverride, else "<release>-<chart name>" (just the
release name when it already contains the chart name). Cut at 63 characters (DNS label).
*/}}
{{- define "migrate-operator.fullname" -}}
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

{{/* "name-version" for the helm.sh/chart label. */}}
{{- define "migrate-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of the operator's own objects. The worker pods the operator creates carry
app.kubernetes.io/name=migrate-worker, so the selector below never matches them.
*/}}
{{- define "migrate-operator.labels" -}}
helm.sh/chart: {{ include "migrate-operator.chart" . }}
{{ include "migrate-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: migrate-operator
{{- end }}

{{/* Labels selecting the operator pods (immutable in a Deployment: never add to them). */}}
{{- define "migrate-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "migrate-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "migrate-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "migrate-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "migrate-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Lease's name. */}}
{{- define "migrate-operator.leaseName" -}}
{{- default (include "migrate-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
The operator's RBAC rules, as YAML: the `rules` of files/rbac-role.yaml, a byte-for-byte copy
of deploy/rbac/role.yaml (a test keeps the two identical and checks the installed role).
*/}}
{{- define "migrate-operator.rules" -}}
{{- $role := .Files.Get "files/rbac-role.yaml" | fromYaml }}
{{- if or (not $role) (hasKey $role "Error") (not $role.rules) }}
{{- fail "files/rbac-role.yaml is missing or has no rules (copy deploy/rbac/role.yaml into the chart)" }}
{{- end }}
{{- toYaml $role.rules }}
{{- end }}

{{/*
The leader-election rules (the Lease), as YAML: the `rules` of files/rbac-leader-election.yaml, a
byte-for-byte copy of deploy/rbac/leader-election-role.yaml. Granted by a Role in the release
namespace only, in both modes.
*/}}
{{- define "migrate-operator.leaseRules" -}}
{{- $role := .Files.Get "files/rbac-leader-election.yaml" | fromYaml }}
{{- if or (not $role) (hasKey $role "Error") (not $role.rules) }}
{{- fail "files/rbac-leader-election.yaml is missing or has no rules (copy deploy/rbac/leader-election-role.yaml into the chart)" }}
{{- end }}
{{- toYaml $role.rules }}
{{- end }}

{{/* Checks across values that the schema cannot express. */}}
{{- define "migrate-operator.validate" -}}
{{- if and (not .Values.leaderElection.enabled) (gt (int .Values.replicaCount) 1) }}
{{- fail (printf "replicaCount is %v but leaderElection.enabled is false: more than one replica needs leader election, or every replica would reconcile every job" .Values.replicaCount) }}
{{- end }}
{{- if ge (int .Values.leaderElection.renewDeadlineSeconds) (int .Values.leaderElection.leaseDurationSeconds) }}
{{- fail (printf "leaderElection.renewDeadlineSeconds (%v) must be below leaderElection.leaseDurationSeconds (%v)" .Values.leaderElection.renewDeadlineSeconds .Values.leaderElection.leaseDurationSeconds) }}
{{- end }}
{{- end }}
