package sim_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/attest/sim"
)

// The verifier sends a fresh nonce; the attested party binds it and its public
// key into sim evidence; the verifier consumes the nonce, verifies the
// evidence against the trusted root and validates the claims against its
// reference values.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "sim-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// The attested party's machine.
	platform, err := sim.LoadOrCreate(dir)
	if err != nil {
		log.Fatal(err)
	}
	publicKey := []byte("the attested party's public key")

	// The verifier trusts the platform's root and accepts this executable.
	verifier, err := sim.NewVerifier(platform.RootCertPEM())
	if err != nil {
		log.Fatal(err)
	}
	measurement, err := sim.ExecutableMeasurement()
	if err != nil {
		log.Fatal(err)
	}
	rv := &attest.ReferenceValues{
		AllowSim:     true,
		Measurements: map[attest.TEE][]string{attest.TEESim: {hex.EncodeToString(measurement)}},
		MinSVN:       map[attest.TEE]uint64{attest.TEESim: 2},
	}
	nonces := attest.NewNonces(time.Minute, 0)

	// 1. The verifier issues a nonce.
	nonce := nonces.Issue(time.Now())
	// 2. The attested party binds the nonce and its key into evidence.
	ev, err := platform.Issuer(sim.WithSVN(2)).Issue(ctx, attest.BindReportData(nonce, publicKey))
	if err != nil {
		log.Fatal(err)
	}
	// 3. The verifier checks freshness, the evidence, then its policy.
	if err := nonces.Consume(nonce, time.Now()); err != nil {
		log.Fatal(err)
	}
	claims, err := verifier.Verify(ctx, ev, attest.BindReportData(nonce, publicKey))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("tee:", claims.TEE, "svn:", claims.SVN, "debug:", claims.Debug)
	fmt.Println("validate:", attest.Validate(claims, rv))

	// Presenting the same nonce again is refused.
	err = nonces.Consume(nonce, time.Now())
	fmt.Println("replay refused by:", err.(*attest.Refusal).RefusedBy())
	// Output:
	// tee: sim svn: 2 debug: false
	// validate: <nil>
	// replay refused by: attest.nonce-replayed
}
