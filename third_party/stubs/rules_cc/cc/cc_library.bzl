"""cc_library under rules_cc's per-rule file name (offline stub)."""

cc_library = native.cc_library
