//! End-to-end tests of subsettle live in `tests/tests/`: each starts a real anvil node and a throwaway Postgres
//! through `subsettle-testkit` and drives the contracts and daemons as an operator would.
