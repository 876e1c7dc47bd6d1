package runtime

import (
	"context"
	"errors"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/operator"
)

// buildUDF creates the operator of a udf node for one subtask: an instance
// of the node's WebAssembly module, loaded (once per digest) from
// Options.Modules and run by Options.UDFs.
func buildUDF(ctx context.Context, info *jobspec.NodeInfo, o *Options) (operator.Operator, error) {
	if o.UDFs == nil || o.Modules == nil {
		return nil, errors.New("the job has a udf node: Options.UDFs and Options.Modules are required")
	}
	return o.UDFs.NodeOperator(ctx, info.Node.Params.UDF, info.In[0], o.Modules)
}

// closeOps releases what operators hold outside the process's heap (UDF
// instances).
func (st *subtask) closeOps() {
	for _, op := range st.ops {
		if c, ok := op.(interface{ Close(context.Context) error }); ok {
			_ = c.Close(context.Background())
		}
	}
}
