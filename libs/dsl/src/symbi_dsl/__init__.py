"""The Symbiont DSL: parse, validate, format and compile agent definitions (``.symbi`` files)."""
