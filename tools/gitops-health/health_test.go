package gitopshealth

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/ext"
	lua "github.com/yuin/gopher-lua"
	"sigs.k8s.io/yaml"
)

var (
	gitopsDir   = filepath.Join("..", "..", "charts", "workspace-start-operator", "gitops")
	fixturesDir = filepath.Join("..", "..", "tests", "fixtures", "status")
)

const argoKey = "resource.customizations.health.coder.com_WorkspaceStartRequest"

// expectation is the health each rule set must give one fixture.
type expectation struct {
	argoStatus  string
	argoMessage string
	flux        string
}

// expected covers every file in tests/fixtures/status (TestEveryFixtureHasAnExpectation).
var expected = map[string]expectation{
	// No status yet: the operator has not acted. Flux's expressions error on the
	// missing status, which the kstatus generic reader reports as Unknown and the
	// wait goes on (never Current).
	"new":               {"Progressing", "Waiting for the operator to pick up the request", "Unknown"},
	"pending":           {"Progressing", "Pending: Pending: Resolving the chat's workspace", "InProgress"},
	"starting":          {"Progressing", "Starting: BuildRunning: Workspace build 7 is running", "InProgress"},
	"waiting-for-agent": {"Progressing", "WaitingForAgent: AgentStarting: Agent main is running its startup scripts", "InProgress"},
	"ready":             {"Healthy", "AgentReady: Workspace alice/dev is running and agent main is ready", "Current"},
	"failed-build":      {"Degraded", "BuildFailed: Workspace build 7 failed", "Failed"},
	"failed-quota":      {"Degraded", "InsufficientQuota: The workspace owner has insufficient quota to start it", "Failed"},
	// Ready=True from an older generation must not count.
	"stale-generation": {"Progressing", "Waiting for the operator to observe generation 2", "InProgress"},
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return data
}

// loadFixture decodes a fixture the way the API machinery hands it over:
// integers as int64 (unstructured), other numbers as float64.
func loadFixture(t *testing.T, name string) map[string]any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(readFile(t, filepath.Join(fixturesDir, name+".json"))))
	dec.UseNumber()
	var raw map[string]any
	if err := dec.Decode(&raw); err != nil {
		t.Fatalf("decode fixture %s: %v", name, err)
	}
	return normalize(raw).(map[string]any)
}

func normalize(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, item := range x {
			x[k] = normalize(item)
		}
		return x
	case []any:
		for i, item := range x {
			x[i] = normalize(item)
		}
		return x
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	default:
		return v
	}
}

func fixtureNames(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(fixturesDir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures in %s (%v)", fixturesDir, err)
	}
	var names []string
	for _, f := range files {
		names = append(names, strings.TrimSuffix(filepath.Base(f), ".json"))
	}
	sort.Strings(names)
	return names
}

func TestEveryFixtureHasAnExpectation(t *testing.T) {
	names := fixtureNames(t)
	seen := map[string]bool{}
	for _, n := range names {
		seen[n] = true
		if _, ok := expected[n]; !ok {
			t.Errorf("fixture %s.json has no expectation in health_test.go", n)
		}
	}
	for n := range expected {
		if !seen[n] {
			t.Errorf("expectation %s has no fixture %s.json", n, n)
		}
	}
}

// ---- Argo CD ----

// argoHealth runs the script as Argo CD does (util/lua): a fresh state with the
// base, table, string and math libraries, the live object as the global obj,
// and the returned table read for status and message.
func argoHealth(t *testing.T, script string, obj map[string]any) (string, string) {
	t.Helper()
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{{lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}, {lua.StringLibName, lua.OpenString}, {lua.MathLibName, lua.OpenMath}} {
		l.Push(l.NewFunction(lib.open))
		l.Push(lua.LString(lib.name))
		l.Call(1, 0)
	}
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		t.Fatalf("health script failed: %v", err)
	}
	ret, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		t.Fatalf("health script returned %s, want a table", l.Get(-1).Type())
	}
	status := lua.LVAsString(ret.RawGetString("status"))
	switch status {
	case "Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown":
	default:
		t.Fatalf("health script returned status %q, which Argo CD rejects", status)
	}
	return status, lua.LVAsString(ret.RawGetString("message"))
}

func toLua(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case nil:
		return lua.LNil
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case int64:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	case map[string]any:
		tbl := l.NewTable()
		for k, item := range v {
			tbl.RawSetString(k, toLua(l, item))
		}
		return tbl
	case []any:
		tbl := l.NewTable()
		for _, item := range v {
			tbl.Append(toLua(l, item))
		}
		return tbl
	default:
		panic(fmt.Sprintf("unsupported value %T", value))
	}
}

func TestArgoCDHealth(t *testing.T) {
	script := string(readFile(t, filepath.Join(gitopsDir, "argocd-health.lua")))
	for _, name := range fixtureNames(t) {
		want, ok := expected[name]
		if !ok {
			continue
		}
		t.Run(name, func(t *testing.T) {
			status, message := argoHealth(t, script, loadFixture(t, name))
			if status != want.argoStatus || message != want.argoMessage {
				t.Errorf("Argo CD health = %q %q, want %q %q", status, message, want.argoStatus, want.argoMessage)
			}
		})
	}
}

// TestArgoCDHealthEdgeCases covers shapes that are not worth a fixture file.
func TestArgoCDHealthEdgeCases(t *testing.T) {
	script := string(readFile(t, filepath.Join(gitopsDir, "argocd-health.lua")))
	base := func() map[string]any { return loadFixture(t, "ready") }
	cases := []struct {
		name   string
		mutate func(o map[string]any)
		want   string
	}{
		{"stalled without phase Failed is Degraded", func(o map[string]any) {
			st := o["status"].(map[string]any)
			st["phase"] = "Starting"
			setCondition(st, "Ready", "False")
			setCondition(st, "Stalled", "True")
		}, "Degraded"},
		{"phase Failed without conditions is Degraded", func(o map[string]any) {
			st := o["status"].(map[string]any)
			st["phase"] = "Failed"
			delete(st, "conditions")
		}, "Degraded"},
		{"empty status is Progressing", func(o map[string]any) { o["status"] = map[string]any{} }, "Progressing"},
		{"no conditions is Progressing", func(o map[string]any) {
			delete(o["status"].(map[string]any), "conditions")
			o["status"].(map[string]any)["phase"] = "Pending"
		}, "Progressing"},
		{"Ready=False with phase Ready is Progressing", func(o map[string]any) {
			setCondition(o["status"].(map[string]any), "Ready", "False")
		}, "Progressing"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := base()
			tc.mutate(o)
			if got, msg := argoHealth(t, script, o); got != tc.want {
				t.Errorf("got %q (%q), want %q", got, msg, tc.want)
			}
		})
	}
}

func setCondition(status map[string]any, condType, value string) {
	conds, _ := status["conditions"].([]any)
	for _, c := range conds {
		if m := c.(map[string]any); m["type"] == condType {
			m["status"] = value
			return
		}
	}
	status["conditions"] = append(conds, map[string]any{"type": condType, "status": value, "reason": "Test", "message": ""})
}

// TestArgoCDConfigMapCopy keeps argocd-cm.yaml equal to argocd-health.lua.
func TestArgoCDConfigMapCopy(t *testing.T) {
	var cm struct {
		Kind string            `json:"kind"`
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal(readFile(t, filepath.Join(gitopsDir, "argocd-cm.yaml")), &cm); err != nil {
		t.Fatalf("parse argocd-cm.yaml: %v", err)
	}
	if cm.Kind != "ConfigMap" {
		t.Fatalf("argocd-cm.yaml kind = %q", cm.Kind)
	}
	script := string(readFile(t, filepath.Join(gitopsDir, "argocd-health.lua")))
	if got := cm.Data[argoKey]; got != script {
		t.Errorf("argocd-cm.yaml %s differs from argocd-health.lua; regenerate the ConfigMap copy", argoKey)
	}
}

// ---- Flux ----

type fluxHealthCheck struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	InProgress string `json:"inProgress,omitempty"`
	Failed     string `json:"failed,omitempty"`
	Current    string `json:"current"`
}

func loadFluxChecks(t *testing.T) fluxHealthCheck {
	t.Helper()
	var checks []fluxHealthCheck
	if err := yaml.UnmarshalStrict(readFile(t, filepath.Join(gitopsDir, "flux-health-check-exprs.yaml")), &checks); err != nil {
		t.Fatalf("parse flux-health-check-exprs.yaml: %v", err)
	}
	if len(checks) != 1 || checks[0].APIVersion != "coder.com/v1alpha1" || checks[0].Kind != "WorkspaceStartRequest" {
		t.Fatalf("want exactly one coder.com/v1alpha1 WorkspaceStartRequest entry, got %+v", checks)
	}
	return checks[0]
}

// fluxEnv mirrors NewExpression in fluxcd/pkg/runtime/cel: parsed, not
// type-checked (health checks cannot declare the object's fields), with the
// same environment options.
func fluxEnv(t *testing.T) *cel.Env {
	t.Helper()
	env, err := cel.NewEnv(
		cel.HomogeneousAggregateLiterals(),
		cel.EagerlyValidateDeclarations(true),
		cel.DefaultUTCTimeZone(true),
		cel.CrossTypeNumericComparisons(true),
		cel.OptionalTypes(),
		ext.Strings(),
		ext.Sets(),
		ext.Encoders(),
	)
	if err != nil {
		t.Fatalf("CEL environment: %v", err)
	}
	return env
}

func evalBool(t *testing.T, env *cel.Env, expr string, obj map[string]any) (bool, error) {
	t.Helper()
	ast, issues := env.Parse(expr)
	if issues != nil && issues.Err() != nil {
		t.Fatalf("parse %q: %v", expr, issues.Err())
	}
	prog, err := env.Program(ast, cel.EvalOptions(cel.OptOptimize), cel.InterruptCheckFrequency(100))
	if err != nil {
		t.Fatalf("program %q: %v", expr, err)
	}
	out, _, err := prog.ContextEval(context.Background(), obj)
	if err != nil {
		return false, err
	}
	b, ok := out.Value().(bool)
	if !ok {
		return false, fmt.Errorf("%q returned %T, want bool", expr, out.Value())
	}
	return b, nil
}

// fluxHealth mirrors StatusEvaluator.Evaluate (fluxcd/pkg/runtime/cel): a
// status.observedGeneration that differs from metadata.generation is
// InProgress; then inProgress, failed, current in that order, first true wins;
// none true is InProgress. An evaluation error is Unknown (kstatus generic
// status reader).
func fluxHealth(t *testing.T, env *cel.Env, check fluxHealthCheck, obj map[string]any) string {
	t.Helper()
	if st, ok := obj["status"].(map[string]any); ok {
		if og, ok := st["observedGeneration"].(int64); ok {
			if gen, ok := obj["metadata"].(map[string]any)["generation"].(int64); ok && og != gen {
				return "InProgress"
			}
		}
	}
	for _, rule := range []struct{ expr, status string }{
		{check.InProgress, "InProgress"},
		{check.Failed, "Failed"},
		{check.Current, "Current"},
	} {
		if rule.expr == "" {
			continue
		}
		ok, err := evalBool(t, env, rule.expr, obj)
		if err != nil {
			return "Unknown"
		}
		if ok {
			return rule.status
		}
	}
	return "InProgress"
}

func TestFluxHealth(t *testing.T) {
	check := loadFluxChecks(t)
	env := fluxEnv(t)
	for _, name := range fixtureNames(t) {
		want, ok := expected[name]
		if !ok {
			continue
		}
		t.Run(name, func(t *testing.T) {
			if got := fluxHealth(t, env, check, loadFixture(t, name)); got != want.flux {
				t.Errorf("Flux health = %q, want %q", got, want.flux)
			}
		})
	}
}

// TestFluxExpressionsAreSelfContained checks each expression alone (without
// the evaluator's generation gate), so a reordering in Flux cannot make a
// stale Ready count: inProgress must be true for a stale status.
func TestFluxExpressionsAreSelfContained(t *testing.T) {
	check := loadFluxChecks(t)
	env := fluxEnv(t)
	got, err := evalBool(t, env, check.InProgress, loadFixture(t, "stale-generation"))
	if err != nil || !got {
		t.Errorf("inProgress on stale-generation = %v, %v; want true", got, err)
	}
	for _, name := range []string{"pending", "starting", "waiting-for-agent", "ready", "failed-build"} {
		if got, err := evalBool(t, env, check.InProgress, loadFixture(t, name)); err != nil || got {
			t.Errorf("inProgress on %s = %v, %v; want false", name, got, err)
		}
	}
}

// TestFluxKustomizationCopy keeps flux-kustomization.yaml's healthCheckExprs
// equal to flux-health-check-exprs.yaml.
func TestFluxKustomizationCopy(t *testing.T) {
	var ks struct {
		Kind string `json:"kind"`
		Spec struct {
			Wait             bool              `json:"wait"`
			HealthCheckExprs []fluxHealthCheck `json:"healthCheckExprs"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(readFile(t, filepath.Join(gitopsDir, "flux-kustomization.yaml")), &ks); err != nil {
		t.Fatalf("parse flux-kustomization.yaml: %v", err)
	}
	if ks.Kind != "Kustomization" || !ks.Spec.Wait {
		t.Fatalf("flux-kustomization.yaml must be a Kustomization with wait: true")
	}
	want := loadFluxChecks(t)
	if len(ks.Spec.HealthCheckExprs) != 1 || ks.Spec.HealthCheckExprs[0] != want {
		t.Errorf("flux-kustomization.yaml healthCheckExprs = %+v, want %+v", ks.Spec.HealthCheckExprs, want)
	}
}

// ---- fixtures against the CRD ----

// TestFixturesMatchCRDSchema checks that every field of every fixture's status
// is declared by the generated CRD (crds/workspacestartrequests.coder.com.yaml),
// so the health rules are tested on status objects the API server would store.
func TestFixturesMatchCRDSchema(t *testing.T) {
	path := filepath.Join("..", "..", "crds", "workspacestartrequests.coder.com.yaml")
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		t.Skipf("%s not generated yet", path)
	}
	if err != nil {
		t.Fatal(err)
	}
	var crd struct {
		Spec struct {
			Versions []struct {
				Name   string `json:"name"`
				Schema struct {
					OpenAPIV3Schema map[string]any `json:"openAPIV3Schema"`
				} `json:"schema"`
			} `json:"versions"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(data, &crd); err != nil {
		t.Fatalf("parse CRD: %v", err)
	}
	var root map[string]any
	for _, v := range crd.Spec.Versions {
		if v.Name == "v1alpha1" {
			root = v.Schema.OpenAPIV3Schema
		}
	}
	if root == nil {
		t.Fatalf("CRD has no v1alpha1 schema")
	}
	statusSchema, _ := root["properties"].(map[string]any)["status"].(map[string]any)
	if statusSchema == nil {
		t.Fatalf("CRD v1alpha1 has no status schema")
	}
	for _, name := range fixtureNames(t) {
		obj := loadFixture(t, name)
		if st, ok := obj["status"]; ok {
			for _, problem := range undeclared("status", st, statusSchema) {
				t.Errorf("%s.json: %s", name, problem)
			}
		}
	}
}

// undeclared lists the paths of values the schema does not declare.
func undeclared(path string, value any, schema map[string]any) []string {
	var out []string
	switch v := value.(type) {
	case map[string]any:
		props, hasProps := schema["properties"].(map[string]any)
		if !hasProps {
			return nil // free-form object (additionalProperties or preserve-unknown-fields)
		}
		for k, item := range v {
			sub, ok := props[k].(map[string]any)
			if !ok {
				out = append(out, path+"."+k+" is not in the CRD schema")
				continue
			}
			out = append(out, undeclared(path+"."+k, item, sub)...)
		}
	case []any:
		items, _ := schema["items"].(map[string]any)
		if items == nil {
			return nil
		}
		for i, item := range v {
			out = append(out, undeclared(fmt.Sprintf("%s[%d]", path, i), item, items)...)
		}
	case string:
		if enum, ok := schema["enum"].([]any); ok {
			found := false
			for _, e := range enum {
				if e == v {
					found = true
				}
			}
			if !found {
				out = append(out, fmt.Sprintf("%s=%q is not one of %v", path, v, enum))
			}
		}
	}
	return out
}

func TestUndeclared(t *testing.T) {
	schema := map[string]any{"properties": map[string]any{
		"phase":      map[string]any{"type": "string", "enum": []any{"Pending", "Ready"}},
		"conditions": map[string]any{"type": "array", "items": map[string]any{"properties": map[string]any{"type": map[string]any{}}}},
	}}
	got := undeclared("status", map[string]any{
		"phase":      "Bogus",
		"extra":      int64(1),
		"conditions": []any{map[string]any{"type": "Ready", "nope": "x"}},
	}, schema)
	sort.Strings(got)
	want := []string{
		"status.conditions[0].nope is not in the CRD schema",
		"status.extra is not in the CRD schema",
		`status.phase="Bogus" is not one of [Pending Ready]`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("undeclared = %q, want %q", got, want)
	}
}
