package seal_test

import (
	"fmt"

	"github.com/sealflow/sealflow/seal"
)

// An owner seals a stream's frames; a consumer holding the same key opens them
// and learns when the stream was cut short.
func Example() {
	keys := seal.NewKeyring()
	if _, err := keys.Rotate("meters"); err != nil { // epoch 1
		panic(err)
	}
	s, _ := seal.NewSealer(keys, seal.KindIngest, "meters", 0, seal.WithPadding(256))
	f0, _ := s.Seal(nil, []byte(`{"kwh":1.5}`), 1000, 1999)
	f1, _ := s.Seal(nil, []byte(`{"kwh":0.7}`), 2000, 2999)

	o, _ := seal.NewOpener(keys, seal.KindIngest, []string{"meters"})
	h, body, err := o.Open(nil, f0)
	fmt.Println(h.Seq, h.Epoch, string(body), err)
	_, _, err = o.Open(nil, f0)
	fmt.Println(seal.ReasonOf(err))
	_, _, err = o.Open(nil, f1)
	fmt.Println(err)
	fmt.Println(seal.ReasonOf(o.CheckEnd("meters")))
	// Output:
	// 0 1 {"kwh":1.5} <nil>
	// replayed
	// <nil>
	// truncated
}

// A data key is wrapped to a recipient's HPKE public key, bound to what it is
// for; only that recipient, asking for that purpose, can unwrap it.
func ExampleWrap() {
	kem, _ := seal.KEMByName("mlkem768x25519")
	node, _ := kem.GenerateKey()

	keys := seal.NewKeyring()
	k, _ := keys.Rotate("meters")
	secret, _ := k.Bytes()
	info := seal.WrapInfo{Purpose: "stream-key", KeyID: k.ID().String(), Recipient: "node-7"}
	w, _ := seal.Wrap(node.PublicKey(), info.Bytes(), secret)
	wire, _ := w.MarshalBinary()

	got, _ := seal.ParseWrapped(wire)
	unwrapped, err := seal.Unwrap(node, info.Bytes(), got)
	fmt.Println(len(unwrapped), err)
	info.Purpose = "output-key"
	_, err = seal.Unwrap(node, info.Bytes(), got)
	fmt.Println(err.(interface{ RefusedBy() string }).RefusedBy())
	// Output:
	// 32 <nil>
	// seal.unwrap
}
