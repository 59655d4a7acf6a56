package fluxcd

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/fluxcd/pkg/apis/kustomize"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

var (
	gitopsDir   = filepath.Join("..", "..", "..", "charts", "workspace-start-operator", "gitops")
	fixturesDir = filepath.Join("..", "..", "..", "tests", "fixtures", "status")
)

type expectations struct {
	Fixtures map[string]struct {
		ArgoCD  Verdict `json:"argocd"` // checked in ../argocd
		Flux    Verdict `json:"flux"`
		Kstatus Verdict `json:"kstatus"`
	} `json:"fixtures"`
}

func loadExpectations(t *testing.T) expectations {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "expectations.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var exp expectations
	if err := yaml.UnmarshalStrict(data, &exp); err != nil {
		t.Fatalf("expectations.yaml: %v", err)
	}
	return exp
}

func fixture(t *testing.T, name string) *unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(fixturesDir, name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	obj, err := ReadObject(data)
	if err != nil {
		t.Fatalf("%s.json: %v", name, err)
	}
	return obj
}

func healthChecks(t *testing.T) []kustomize.CustomHealthCheck {
	t.Helper()
	checks, err := LoadHealthChecks(filepath.Join(gitopsDir, "flux-health-check-exprs.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(checks) != 1 || checks[0].APIVersion != "coder.com/v1alpha1" || checks[0].Kind != "WorkspaceStartRequest" {
		t.Fatalf("want one coder.com/v1alpha1 WorkspaceStartRequest entry, got %+v", checks)
	}
	return checks
}

func fixtureNames(t *testing.T, exp expectations) []string {
	t.Helper()
	names, err := FixtureNames(fixturesDir)
	if err != nil || len(names) == 0 {
		t.Fatalf("no fixtures in %s (%v)", fixturesDir, err)
	}
	for _, n := range names {
		if _, ok := exp.Fixtures[n]; !ok {
			t.Errorf("fixture %s.json has no entry in expectations.yaml", n)
		}
	}
	for n := range exp.Fixtures {
		if _, err := os.Stat(filepath.Join(fixturesDir, n+".json")); err != nil {
			t.Errorf("expectations.yaml names %s, which has no fixture", n)
		}
	}
	return names
}

// TestFluxHealthOfCapturedStatuses runs Flux's CEL status reader with the chart's
// healthCheckExprs on every status the operator was seen to write. Flux reports only the status
// (and an error message for Unknown), so only the status is compared.
func TestFluxHealthOfCapturedStatuses(t *testing.T) {
	exp := loadExpectations(t)
	checks := healthChecks(t)
	for _, name := range fixtureNames(t, exp) {
		t.Run(name, func(t *testing.T) {
			got, err := Flux(checks, fixture(t, name))
			if err != nil {
				t.Fatal(err)
			}
			if want := exp.Fixtures[name].Flux; got.Status != want.Status {
				t.Errorf("Flux health = %+v, want %s", got, want.Status)
			}
		})
	}
}

// TestKstatusOfCapturedStatuses runs plain kstatus (no custom rules: what kubectl-style waiters
// and cli-utils' applier see) on every captured status.
func TestKstatusOfCapturedStatuses(t *testing.T) {
	exp := loadExpectations(t)
	for _, name := range fixtureNames(t, exp) {
		t.Run(name, func(t *testing.T) {
			got, err := Kstatus(fixture(t, name))
			if err != nil {
				t.Fatal(err)
			}
			if want := exp.Fixtures[name].Kstatus; got != want {
				t.Errorf("kstatus = %+v, want %+v", got, want)
			}
		})
	}
}

// TestFluxKustomizationCarriesTheExpressions keeps flux-kustomization.yaml's healthCheckExprs
// equal to flux-health-check-exprs.yaml.
func TestFluxKustomizationCarriesTheExpressions(t *testing.T) {
	var ks struct {
		Kind string `json:"kind"`
		Spec struct {
			Wait             bool                          `json:"wait"`
			HealthCheckExprs []kustomize.CustomHealthCheck `json:"healthCheckExprs"`
		} `json:"spec"`
	}
	data, err := os.ReadFile(filepath.Join(gitopsDir, "flux-kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &ks); err != nil {
		t.Fatal(err)
	}
	if ks.Kind != "Kustomization" || !ks.Spec.Wait {
		t.Fatalf("flux-kustomization.yaml must be a Kustomization with wait: true")
	}
	want := healthChecks(t)
	if len(ks.Spec.HealthCheckExprs) != 1 || ks.Spec.HealthCheckExprs[0] != want[0] {
		t.Errorf("healthCheckExprs = %+v, want %+v", ks.Spec.HealthCheckExprs, want)
	}
}
