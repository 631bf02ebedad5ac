// Moved to the lab, so the bench builds stacks without importing tests/.
export * from "../../lab/lib/stack-mocks.js";
