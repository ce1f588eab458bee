"""Integer-only reference of a power-of-two int8 network (numpy; imports nothing above `errors`).

`program.py`: the integer model file (integer_model.npz: arrays + a JSON program of ops);
`reference.py`: runs it with integer operations only; `golden.py`: golden vectors and the
standalone checker (`check_golden.py`, numpy only) that a hardware team runs.
"""
