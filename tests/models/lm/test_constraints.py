"""The testbed's copying constraint."""

from ppl.models.lm.testbed import constraints, tasks


def test_the_reference_solution_passes_and_copying_slips_do_not():
    prompt = "Q 17 +8 *3 -25\n"
    solution = tasks.parse_prompt(prompt).solution()
    assert all(constraints.copies_the_prompt(prompt, solution[:i])
               for i in range(len(solution) + 1))
    assert constraints.copies_the_prompt(prompt, solution, ended=True)
    assert not constraints.copies_the_prompt(prompt, solution[:-1], ended=True)
    # A misread operand or a wrong left value is refused as soon as it is written...
    assert not constraints.copies_the_prompt(prompt, "17+9")
    assert not constraints.copies_the_prompt(prompt, "17+8=26\n25")
    assert not constraints.copies_the_prompt(prompt, "17+8=2a")
    # ...a wrong result is not (the arithmetic stays the model's), and is carried forward.
    assert constraints.copies_the_prompt(prompt, "17+8=26\n26*3=78\n")
    assert not constraints.copies_the_prompt(prompt, "17+8=25\n25*3=75\n75-25=50\nA 51")
    assert not constraints.copies_the_prompt(prompt, solution + "Q")
