"""The symbi command."""
