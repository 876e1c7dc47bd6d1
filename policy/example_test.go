package policy_test

import (
	"fmt"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/policy"
)

func Example() {
	p, err := policy.CompileBytes([]byte(`
stream: households/meter
rules:
  - name: real-tee
    stage: placement
    expr: node.tee in ['snp', 'tdx'] && node.svn >= 3 && !node.debug
  - name: in-eu
    stage: placement
    expr: node.region.startsWith('eu-')
  - name: providers-own-outputs
    stage: recipient
    expr: recipient.role == 'provider' && recipient.id == service.provider
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	claims := &attest.Claims{TEE: attest.TEESNP, SVN: 2, Measurement: []byte{0xaa}}
	node := policy.NodeFromClaims("node-7", claims, policy.Location{Tier: "edge", Region: "eu-west", Site: "ams1"})
	d := p.Evaluate(policy.StagePlacement, policy.Input{Service: policy.Service{ID: "balancer", Provider: "gridco"}, Node: node})
	fmt.Println(d.Allowed, d.Err())
	for _, r := range d.Trace {
		fmt.Println(r.Rule, r.Holds)
	}
	// Output:
	// false refused by rule policy:households/meter/real-tee: placement rule real-tee does not hold: node.tee in ['snp', 'tdx'] && node.svn >= 3 && !node.debug
	// real-tee false
	// in-eu true
}
