// Command kstatus prints what kstatus (sigs.k8s.io/cli-utils status.Compute) and, with
// -flux-exprs, Flux's CEL status reader say about one Kubernetes object read from stdin (JSON or
// YAML), as JSON: {"kstatus":{"status":…,"message":…},"flux":{…}}. The end-to-end tests use it
// to check live objects.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/coder-operators/workspace-start-operator/tools/gitops-health/fluxcd"
)

func main() {
	exprs := flag.String("flux-exprs", "", "a Flux healthCheckExprs list (YAML) to evaluate too")
	flag.Parse()
	if err := run(*exprs); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(exprs string) error {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		return err
	}
	obj, err := fluxcd.ReadObject(data)
	if err != nil {
		return err
	}
	out := map[string]fluxcd.Verdict{}
	if out["kstatus"], err = fluxcd.Kstatus(obj); err != nil {
		return err
	}
	if exprs != "" {
		checks, err := fluxcd.LoadHealthChecks(exprs)
		if err != nil {
			return err
		}
		if out["flux"], err = fluxcd.Flux(checks, obj); err != nil {
			return err
		}
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}
