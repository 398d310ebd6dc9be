"""How a run happens: plan, the runner, executors (serial, Ray), models by role, evaluate,
compare, validate, train."""
