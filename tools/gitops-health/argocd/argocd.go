// Package argocd evaluates the chart's Argo CD health customization with Argo CD's own code:
// the settings manager reads the argocd-cm patch (as Argo CD reads its ConfigMap) and returns
// the resource overrides; gitops-engine's health.GetResourceHealth runs the Lua health script
// through Argo CD's util/lua, exactly as the application controller does.
package argocd

import (
	"context"
	"fmt"
	"os"

	"github.com/argoproj/argo-cd/v2/util/lua"
	"github.com/argoproj/argo-cd/v2/util/settings"
	"github.com/argoproj/gitops-engine/pkg/health"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/yaml"
)

// Namespace is where Argo CD runs (and where the argocd-cm patch points).
const Namespace = "argocd"

// Verdict is Argo CD's health of one object.
type Verdict struct {
	Status  string `json:"status"`
	Message string `json:"message,omitempty"`
}

// Health computes resource health the way Argo CD's application controller does, with the
// resource overrides Argo CD's settings manager reads from the given argocd-cm ConfigMap file.
type Health struct {
	overrides lua.ResourceHealthOverrides
}

// NewHealth loads the argocd-cm ConfigMap from cmPath into a fake cluster (with the
// argocd-secret Argo CD expects beside it) and reads the overrides through Argo CD's settings
// manager.
func NewHealth(ctx context.Context, cmPath string) (*Health, error) {
	data, err := os.ReadFile(cmPath)
	if err != nil {
		return nil, err
	}
	var cm corev1.ConfigMap
	if err := yaml.UnmarshalStrict(data, &cm); err != nil {
		return nil, fmt.Errorf("parse %s: %w", cmPath, err)
	}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{
		Name:      "argocd-secret",
		Namespace: Namespace,
		Labels:    map[string]string{"app.kubernetes.io/part-of": "argocd"},
	}}
	client := fake.NewClientset(&cm, secret)
	mgr := settings.NewSettingsManager(ctx, client, Namespace)
	overrides, err := mgr.GetResourceOverrides()
	if err != nil {
		return nil, fmt.Errorf("argo CD settings manager: %w", err)
	}
	return &Health{overrides: lua.ResourceHealthOverrides(overrides)}, nil
}

// Of returns the object's health; no health at all (no rule for the kind) is an error.
func (h *Health) Of(obj *unstructured.Unstructured) (Verdict, error) {
	hs, err := health.GetResourceHealth(obj, h.overrides)
	if err != nil {
		return Verdict{}, err
	}
	if hs == nil {
		return Verdict{}, fmt.Errorf("argo CD has no health check for %s", obj.GroupVersionKind())
	}
	return Verdict{Status: string(hs.Status), Message: hs.Message}, nil
}
