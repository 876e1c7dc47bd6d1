package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/seal"
)

func init() {
	register("keygen", "generate a party's signing and HPKE keys into a key file", runKeygen)
}

// runKeygen implements `sealflow keygen --role ROLE --name NAME --out FILE
// [--kem x25519|mlkem768x25519] [--json]`. Workers and the orchestrator make
// their keys inside their TEEs, so only the roles of people are offered here.
func runKeygen(ctx context.Context, args []string) error {
	fs := newFlags("keygen")
	role := fs.String("role", "", "the party's role: owner, provider, operator or recipient")
	name := fs.String("name", "", "the party's name, shown to others (1 to 128 printable characters)")
	out := fs.String("out", "", "the key file to create (mode 0600); an existing file is never overwritten")
	kemName := fs.String("kem", "x25519", "the HPKE KEM: x25519, or mlkem768x25519 for the post-quantum hybrid")
	asJSON := fs.Bool("json", false, "print the public identity as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	switch party.Role(*role) {
	case party.RoleOwner, party.RoleProvider, party.RoleOperator, party.RoleRecipient:
	case "":
		return fmt.Errorf("%w: --role is required (owner, provider, operator or recipient)", errUsage)
	default:
		return fmt.Errorf("%w: --role %q: want owner, provider, operator or recipient (workers and the orchestrator generate keys inside their TEE)", errUsage, *role)
	}
	if *name == "" || *out == "" {
		return fmt.Errorf("%w: --name and --out are required", errUsage)
	}
	kem, err := seal.KEMByName(*kemName)
	if err != nil {
		return fmt.Errorf("%w: --kem: %v", errUsage, err)
	}
	if _, err := os.Lstat(*out); err == nil {
		return fmt.Errorf("%s already exists; refusing to overwrite a key file (choose another --out)", *out)
	}
	kf, err := party.Generate(party.Role(*role), *name, kem)
	if err != nil {
		return err
	}
	if err := kf.Save(*out); err != nil {
		return err
	}
	id := kf.Identity()
	if *asJSON {
		b, err := json.MarshalIndent(id, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintln(os.Stdout, string(b))
		return nil
	}
	fmt.Fprintf(os.Stdout, "wrote %s\nrole: %s\nname: %s\nid:   %s\nkem:  %s\n", *out, id.Role, id.Name, id.ID(), seal.KEMName(id.KEM))
	return nil
}
