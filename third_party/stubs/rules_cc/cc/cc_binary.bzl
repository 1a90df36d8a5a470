"""cc_binary under rules_cc's per-rule file name (offline stub)."""

cc_binary = native.cc_binary
