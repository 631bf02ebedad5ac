// Moved to the lab, which owns the namespace plumbing; the tests keep importing it from here.
export * from "../../lab/lib/netns.js";
