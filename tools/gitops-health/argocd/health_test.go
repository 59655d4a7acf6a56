package argocd

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

var (
	gitopsDir   = filepath.Join("..", "..", "..", "charts", "workspace-start-operator", "gitops")
	fixturesDir = filepath.Join("..", "..", "..", "tests", "fixtures", "status")
)

const argoKey = "resource.customizations.health.coder.com_WorkspaceStartRequest"

type expectations struct {
	Fixtures map[string]struct {
		ArgoCD  Verdict `json:"argocd"`
		Flux    Verdict `json:"flux"`    // checked in ../fluxcd
		Kstatus Verdict `json:"kstatus"` // checked in ../fluxcd
	} `json:"fixtures"`
}

func load(t *testing.T) (*Health, expectations) {
	t.Helper()
	h, err := NewHealth(context.Background(), filepath.Join(gitopsDir, "argocd-cm.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var exp expectations
	data, err := os.ReadFile(filepath.Join("..", "expectations.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(data, &exp); err != nil {
		t.Fatalf("expectations.yaml: %v", err)
	}
	return h, exp
}

func fixture(t *testing.T, name string) *unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(fixturesDir, name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(data); err != nil {
		t.Fatalf("%s.json: %v", name, err)
	}
	return obj
}

// TestArgoCDHealthOfCapturedStatuses runs Argo CD's own health code, configured from the
// chart's argocd-cm patch, on every status the operator was seen to write.
func TestArgoCDHealthOfCapturedStatuses(t *testing.T) {
	h, exp := load(t)
	files, _ := filepath.Glob(filepath.Join(fixturesDir, "*.json"))
	if len(files) == 0 {
		t.Fatalf("no fixtures in %s", fixturesDir)
	}
	var names []string
	for _, f := range files {
		names = append(names, strings.TrimSuffix(filepath.Base(f), ".json"))
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			want, ok := exp.Fixtures[name]
			if !ok {
				t.Fatalf("fixture %s.json has no entry in expectations.yaml", name)
			}
			got, err := h.Of(fixture(t, name))
			if err != nil {
				t.Fatal(err)
			}
			if got != want.ArgoCD {
				t.Errorf("Argo CD health = %+v, want %+v", got, want.ArgoCD)
			}
		})
	}
	for name := range exp.Fixtures {
		if _, err := os.Stat(filepath.Join(fixturesDir, name+".json")); err != nil {
			t.Errorf("expectations.yaml names %s, which has no fixture", name)
		}
	}
}

// TestArgoCDConfigMapCarriesTheScript keeps argocd-cm.yaml's script equal to argocd-health.lua.
func TestArgoCDConfigMapCarriesTheScript(t *testing.T) {
	var cm struct {
		Data map[string]string `json:"data"`
	}
	data, err := os.ReadFile(filepath.Join(gitopsDir, "argocd-cm.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &cm); err != nil {
		t.Fatal(err)
	}
	script, err := os.ReadFile(filepath.Join(gitopsDir, "argocd-health.lua"))
	if err != nil {
		t.Fatal(err)
	}
	if cm.Data[argoKey] != string(script) {
		t.Errorf("argocd-cm.yaml %s differs from argocd-health.lua", argoKey)
	}
}

// TestArgoCDHealthEdgeCases covers status shapes the operator does not write today but a rule
// must still read right (a newer operator, a hand-edited status).
func TestArgoCDHealthEdgeCases(t *testing.T) {
	h, _ := load(t)
	cases := []struct {
		name   string
		status map[string]any
		want   string
	}{
		{"Stalled=True without phase Failed is Degraded", map[string]any{
			"observedGeneration": int64(1), "phase": "Starting",
			"conditions": []any{cond("Ready", "False"), cond("Stalled", "True")},
		}, "Degraded"},
		{"phase Failed without conditions is Degraded", map[string]any{
			"observedGeneration": int64(1), "phase": "Failed",
		}, "Degraded"},
		{"empty status is Progressing", map[string]any{}, "Progressing"},
		{"Ready=False with phase Ready is Progressing", map[string]any{
			"observedGeneration": int64(1), "phase": "Ready",
			"conditions": []any{cond("Ready", "False")},
		}, "Progressing"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			obj := &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "coder.com/v1alpha1", "kind": "WorkspaceStartRequest",
				"metadata": map[string]any{"name": "x", "namespace": "ns", "generation": int64(1)},
				"status":   tc.status,
			}}
			got, err := h.Of(obj)
			if err != nil {
				t.Fatal(err)
			}
			if got.Status != tc.want {
				t.Errorf("got %+v, want %s", got, tc.want)
			}
		})
	}
}

func cond(typ, status string) map[string]any {
	return map[string]any{"type": typ, "status": status, "reason": "Test", "message": "m"}
}
