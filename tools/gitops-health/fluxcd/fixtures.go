// Package fluxcd evaluates the chart's Flux health check expressions with Flux's own code
// (github.com/fluxcd/pkg/runtime/cel, the status reader kustomize-controller uses for
// spec.healthCheckExprs) and plain kstatus (sigs.k8s.io/cli-utils pkg/kstatus/status.Compute) on
// the status fixtures captured from real operator runs.
package fluxcd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/fluxcd/pkg/apis/kustomize"
	fluxcel "github.com/fluxcd/pkg/runtime/cel"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

// Verdict is what one tool says about one object.
type Verdict struct {
	Status  string `json:"status"`
	Message string `json:"message,omitempty"`
}

// Kstatus computes the object's status with kstatus alone (what kubectl-style waiters,
// Config Sync and cli-utils' applier use).
func Kstatus(obj *unstructured.Unstructured) (Verdict, error) {
	res, err := status.Compute(obj)
	if err != nil {
		return Verdict{}, err
	}
	return Verdict{Status: res.Status.String(), Message: res.Message}, nil
}

// LoadHealthChecks parses a list of Flux Kustomization healthCheckExprs entries.
func LoadHealthChecks(path string) ([]kustomize.CustomHealthCheck, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var checks []kustomize.CustomHealthCheck
	if err := yaml.UnmarshalStrict(data, &checks); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	return checks, nil
}

// Flux reads the object's status the way kustomize-controller does for a Kustomization with
// these healthCheckExprs: Flux's CEL status reader behind kstatus's generic status reader
// (an expression error becomes Unknown).
func Flux(checks []kustomize.CustomHealthCheck, obj *unstructured.Unstructured) (Verdict, error) {
	factory, err := fluxcel.NewStatusReader(checks)
	if err != nil {
		return Verdict{}, err
	}
	res, err := factory(nil).ReadStatusForObject(context.Background(), nil, obj)
	if err != nil {
		return Verdict{}, err
	}
	v := Verdict{Status: res.Status.String(), Message: res.Message}
	if res.Error != nil && v.Message == "" {
		v.Message = res.Error.Error()
	}
	return v, nil
}

// ReadObject decodes one object from JSON or YAML the way the API machinery hands it to
// controllers (integers as int64).
func ReadObject(data []byte) (*unstructured.Unstructured, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, err
	}
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(js); err != nil {
		return nil, err
	}
	return obj, nil
}

// FixtureNames lists the fixtures in dir (file names without .json), sorted.
func FixtureNames(dir string) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	var names []string
	for _, f := range files {
		names = append(names, strings.TrimSuffix(filepath.Base(f), ".json"))
	}
	sort.Strings(names)
	return names, nil
}
