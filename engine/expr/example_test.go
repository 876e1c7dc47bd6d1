package expr_test

import (
	"fmt"

	"github.com/sealflow/sealflow/engine/expr"
	"github.com/sealflow/sealflow/engine/record"
)

func ExampleCompile() {
	schema := &record.Schema{Fields: []record.Field{
		{Name: "auction", Type: record.TypeInt},
		{Name: "price", Type: record.TypeInt},
	}}
	filter, err := expr.Compile("auction % 123 == 0 && price > 100", schema, record.TypeBool)
	if err != nil {
		fmt.Println(err)
		return
	}
	rec := &record.Record{Values: []record.Value{record.Int(246), record.Int(150)}}
	ok, err := filter.EvalBool(rec)
	fmt.Println(ok, err, filter.Compiled())
	// Output: true <nil> true
}
