"""The worker package: lifecycle, dispatch, runner, slots, isolation, processes, supervisor."""
