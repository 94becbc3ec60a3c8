{{/*
Chart name, overridable with nameOverride.
*/}}
{{- define "koodrive-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Name of the namespaced objects: `<release>-<chart>`, or the release name alone when it already
contains the chart name. Truncated to 63 characters (DNS label limit).
*/}}
{{- define "koodrive-operator.fullname" -}}
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

{{/*
Name of cluster-scoped objects (ClusterRoles, ClusterRoleBindings). It carries the release
namespace so that one operator per namespace (watchNamespace mode), all with the same release
name, don't fight over the same ClusterRole.
*/}}
{{- define "koodrive-operator.clusterName" -}}
{{- printf "%s-%s" (include "koodrive-operator.fullname" .) .Release.Namespace | trunc 253 | trimSuffix "-" }}
{{- end }}

{{- define "koodrive-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "koodrive-operator.labels" -}}
helm.sh/chart: {{ include "koodrive-operator.chart" . }}
{{ include "koodrive-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: koodrive-operator
{{- end }}

{{/*
Labels selecting the operator pods. Never change these: a Deployment's selector is immutable.
*/}}
{{- define "koodrive-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "koodrive-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "koodrive-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "koodrive-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "koodrive-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "koodrive-operator.leaseName" -}}
{{- default (include "koodrive-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
Rules on the namespaced resources the controller works with. Granted cluster-wide by a
ClusterRole, or in the watched namespace by a Role.
*/}}
{{- define "koodrive-operator.workloadRules" -}}
- apiGroups: ["koodrive.io"]
  resources: ["userbatches"]
  verbs: ["get", "list", "watch"]
# The finalizer of `deletionPolicy: Delete`, and removing `koodrive.io/confirm-deletions`
# once acted on: merge patches carrying the resourceVersion read. Never the spec.
- apiGroups: ["koodrive.io"]
  resources: ["userbatches"]
  verbs: ["patch"]
- apiGroups: ["koodrive.io"]
  resources: ["userbatches/status"]
  verbs: ["get", "patch", "update"]
# Accounts are read from the watch; only their status is written.
- apiGroups: ["koodrive.io"]
  resources: ["koodriveaccounts"]
  verbs: ["list", "watch"]
- apiGroups: ["koodrive.io"]
  resources: ["koodriveaccounts/status"]
  verbs: ["patch"]
# Credentials and initial passwords; read only.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
Rules on cluster-scoped resources, granted only cluster-wide (without watchNamespace): the
ClusterKooDriveAccounts, and the namespaces' labels their selectors match.
*/}}
{{- define "koodrive-operator.clusterRules" -}}
- apiGroups: ["koodrive.io"]
  resources: ["clusterkoodriveaccounts"]
  verbs: ["list", "watch"]
- apiGroups: ["koodrive.io"]
  resources: ["clusterkoodriveaccounts/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}

{{/*
Value checks a JSON schema cannot express.
*/}}
{{- define "koodrive-operator.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: without a Lease every replica would reconcile" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled .Values.metrics.podMonitor.enabled }}
{{- fail "enable only one of metrics.serviceMonitor and metrics.podMonitor: both would scrape every pod twice" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled=true needs metrics.service.enabled=true: the ServiceMonitor scrapes that Service" }}
{{- end }}
{{- if and .Values.caBundle.configMap.name .Values.caBundle.secret.name }}
{{- fail "caBundle: set only one of caBundle.configMap.name and caBundle.secret.name" }}
{{- end }}
{{- if .Values.clusterAccount.create }}
{{- if .Values.watchNamespace }}
{{- fail "clusterAccount.create=true needs the operator to watch every namespace (watchNamespace empty): with watchNamespace it has no cluster-wide permissions and uses no ClusterKooDriveAccounts" }}
{{- end }}
{{- if not .Values.clusterAccount.credentialsSecret.name }}
{{- fail "clusterAccount.create=true needs clusterAccount.credentialsSecret.name: the Secret (in the release namespace unless clusterAccount.credentialsSecret.namespace) holding accessKey, secretKey and userId. The chart never takes the AK/SK itself" }}
{{- end }}
{{- $allowed := .Values.clusterAccount.allowedNamespaces }}
{{- if not (or $allowed.names $allowed.matchLabels $allowed.matchExpressions $allowed.allNamespaces) }}
{{- fail "clusterAccount.create=true needs clusterAccount.allowedNamespaces: names, matchLabels, matchExpressions, or allNamespaces=true (no namespace may use the account otherwise)" }}
{{- end }}
{{- end }}
{{- $timeout := include "koodrive-operator.seconds" .Values.koodrive.requestTimeout | float64 }}
{{- if le (float64 .Values.terminationGracePeriodSeconds) $timeout }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be longer than koodrive.requestTimeout (%s): on SIGTERM an in-flight KooDrive request needs that long to finish" .Values.terminationGracePeriodSeconds .Values.koodrive.requestTimeout) }}
{{- end }}
{{- if .Values.podDisruptionBudget.enabled }}
{{- $minSet := include "koodrive-operator.isSet" .Values.podDisruptionBudget.minAvailable }}
{{- $maxSet := include "koodrive-operator.isSet" .Values.podDisruptionBudget.maxUnavailable }}
{{- if and $minSet $maxSet }}
{{- fail "podDisruptionBudget: set only one of minAvailable and maxUnavailable (set the other to \"\")" }}
{{- end }}
{{- if not (or $minSet $maxSet) }}
{{- fail "podDisruptionBudget.enabled=true needs minAvailable or maxUnavailable" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"true" when a value is given: not null and not "". Unlike `empty`, 0 counts as given
(maxUnavailable: 0 is meaningful).
*/}}
{{- define "koodrive-operator.isSet" -}}
{{- if not (or (kindIs "invalid" .) (eq (toString .) "")) }}true{{ end }}
{{- end }}

{{/*
Listen address of the metrics/health server; IPv6 addresses need brackets.
*/}}
{{- define "koodrive-operator.metricsAddr" -}}
{{- $host := toString .Values.metrics.bindAddress }}
{{- if and (contains ":" $host) (not (hasPrefix "[" $host)) }}
{{- $host = printf "[%s]" $host }}
{{- end }}
{{- printf "%s:%d" $host (int .Values.metrics.port) }}
{{- end }}

{{/*
A duration as the operator writes it (`30s`, `5m`, `1h30m`, `500ms`) in seconds. Anything
else counts as 0 s; values.schema.json refuses other forms before this runs.
*/}}
{{- define "koodrive-operator.seconds" -}}
{{- $total := 0.0 }}
{{- range regexFindAll "[0-9]+(ms|s|m|h)" (toString .) -1 }}
{{- $number := regexFind "^[0-9]+" . | float64 }}
{{- $unit := trimPrefix (regexFind "^[0-9]+" .) . }}
{{- if eq $unit "ms" }}
{{- $total = addf $total (divf $number 1000) }}
{{- else if eq $unit "s" }}
{{- $total = addf $total $number }}
{{- else if eq $unit "m" }}
{{- $total = addf $total (mulf $number 60) }}
{{- else }}
{{- $total = addf $total (mulf $number 3600) }}
{{- end }}
{{- end }}
{{- $total }}
{{- end }}

{{/*
The extra CA bundle: the directory it is mounted in, the file name inside it, and the full
path the operator reads (empty when no bundle is configured). The file name is fixed so the
path does not depend on the ConfigMap's or Secret's key.
*/}}
{{- define "koodrive-operator.caBundleDir" -}}
/etc/koodrive-operator/ca
{{- end }}

{{- define "koodrive-operator.caBundleFileName" -}}
ca-bundle.pem
{{- end }}

{{- define "koodrive-operator.caBundleFile" -}}
{{- if or .Values.caBundle.configMap.name .Values.caBundle.secret.name }}
{{- printf "%s/%s" (include "koodrive-operator.caBundleDir" .) (include "koodrive-operator.caBundleFileName" .) }}
{{- end }}
{{- end }}
