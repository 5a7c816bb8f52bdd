{{/*
The base name of every object: the release name when it already names helmq (`helm install
helmq ...` gives helmq-producer, helmq-worker), else "<release>-helmq"; fullnameOverride wins.
*/}}
{{- define "helmq.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object; call with (dict "ctx" $ "component" "producer"). */}}
{{- define "helmq.labels" -}}
app.kubernetes.io/name: {{ include "helmq.fullname" .ctx }}-{{ .component }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: helmq
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version }}
{{- end -}}

{{/* The selector labels of a component's pods (immutable once deployed). */}}
{{- define "helmq.selector" -}}
app.kubernetes.io/name: {{ include "helmq.fullname" .ctx }}-{{ .component }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- end -}}

{{/* An image reference: repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "helmq.image" -}}
{{- $tag := .image.tag | default .ctx.Chart.AppVersion -}}
{{- if .image.digest -}}
{{ .image.repository }}@{{ .image.digest }}
{{- else -}}
{{ .image.repository }}:{{ $tag }}
{{- end -}}
{{- end -}}

{{/* NATS_URL, NATS_USER and NATS_PASSWORD (from the existing Secret) of one NATS user role. */}}
{{- define "helmq.natsEnv" -}}
{{- $user := index .ctx.Values.nats.users .role -}}
- name: NATS_URL
  value: {{ .ctx.Values.nats.url | quote }}
- name: NATS_USER
  value: {{ $user.name | quote }}
- name: NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .ctx.Values.nats.existingSecret }}
      key: {{ $user.passwordKey }}
{{- end -}}

{{/*
Refuses values the processes would refuse at start (the worker's allowlists) and RBAC profiles
that cannot work, with a message naming the value to set.
*/}}
{{- define "helmq.checkValues" -}}
{{- $w := .Values.worker -}}
{{- if and (not $w.allowAnySource) (empty $w.allowedSources) -}}
{{- fail "worker.allowedSources is empty: list the chart sources jobs may use (URL prefixes), or set worker.allowAnySource=true (not recommended); the worker refuses to start without one of them" -}}
{{- end -}}
{{- if and $w.allowAnySource (not (empty $w.allowedSources)) -}}
{{- fail "worker.allowAnySource=true and worker.allowedSources both set: choose one" -}}
{{- end -}}
{{- if and (not $w.allowAnyNamespace) (empty $w.allowedNamespaces) -}}
{{- fail "worker.allowedNamespaces is empty: list the release namespaces jobs may use, or set worker.allowAnyNamespace=true (not recommended); the worker refuses to start without one of them" -}}
{{- end -}}
{{- if and $w.allowAnyNamespace (not (empty $w.allowedNamespaces)) -}}
{{- fail "worker.allowAnyNamespace=true and worker.allowedNamespaces both set: choose one" -}}
{{- end -}}
{{- if eq .Values.rbac.profile "namespaced" -}}
{{- if empty .Values.producer.watchNamespaces -}}
{{- fail "rbac.profile=namespaced needs producer.watchNamespaces: the namespaces whose Components helmq handles" -}}
{{- end -}}
{{- if $w.allowAnyNamespace -}}
{{- fail "rbac.profile=namespaced cannot grant the workers any namespace: list worker.allowedNamespaces instead of worker.allowAnyNamespace" -}}
{{- end -}}
{{- end -}}
{{- if eq .Values.rbac.profile "tenants" -}}
{{- if empty $w.defaultServiceAccount -}}
{{- fail "rbac.profile=tenants needs worker.defaultServiceAccount: the ServiceAccount (in each Component's namespace, e.g. helmq-deployer) that jobs run as; without it helm would run with the workers' own rights, which this profile reduces to impersonation" -}}
{{- end -}}
{{- else if not (empty $w.tenantServiceAccounts) -}}
{{- fail "worker.tenantServiceAccounts is only used by rbac.profile=tenants: set the profile or drop the list" -}}
{{- end -}}
{{- end -}}

{{/* The producer's rules on Components and Events (ClusterRole or Role). */}}
{{- define "helmq.producerRules" }}
rules:
  - apiGroups: ["deployment-orchestrator.io"]
    resources: ["components"]
    verbs: ["get", "list", "watch", "patch"]
  - apiGroups: ["deployment-orchestrator.io"]
    resources: ["components/status"]
    verbs: ["patch"]
  - apiGroups: ["deployment-orchestrator.io"]
    resources: ["components/finalizers"]
    verbs: ["update"]
  - apiGroups: ["events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch"]
  - apiGroups: [""]
    resources: {{ if .Values.producer.watchSecrets }}["configmaps", "secrets"]{{ else }}["configmaps"]{{ end }}
    verbs: ["list", "watch"]
{{- end }}
