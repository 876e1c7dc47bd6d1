// Package orchestrator holds sealflow's trusted control plane: a deterministic
// governance state machine (signed statements in; new state, receipts, key
// releases and transparency-log entries out), the scheduler and the key broker.
// The state machine does no I/O: the server around it (HTTP API, NATS control,
// sealed persistence) feeds it statements and time and performs what it returns.
package orchestrator
