// Moved to the lab, which owns the node plumbing; the tests keep importing it from here.
export * from "../../lab/lib/lab-node.js";
