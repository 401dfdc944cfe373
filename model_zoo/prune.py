"""Statically prune a model in memory: the student starts from the teacher's weights."""

from __future__ import annotations

from collections.abc import Iterable

from flax import nnx

from model_zoo import registry
from model_zoo.base import ZooModel
from model_zoo.blocks import validate_drop_set

WEIGHTS = (nnx.Param, nnx.BatchStat)


def prune(teacher: ZooModel, dropped: Iterable[str]) -> ZooModel:
    """A copy of ``teacher`` without the blocks ``dropped`` (addresses of the teacher as it is).

    Kept blocks are renumbered as in `model_zoo.blocks.renumber`; every kept
    weight (stem and classifier too) is the teacher's. Works on an already
    pruned teacher: drop sets compose.
    """
    dropped = validate_drop_set(dropped, teacher.blocks, teacher.droppable, teacher.model_name)
    to_original = dict(zip(teacher.blocks, teacher.origin))
    to_teacher = {original: current for current, original in to_original.items()}
    all_dropped = tuple(teacher.dropped) + tuple(to_original[b] for b in dropped)
    student = registry.create(teacher.model_name, dropped=all_dropped, **dict(teacher.overrides))
    teacher_weights = dict(nnx.to_flat_state(nnx.state(teacher, WEIGHTS)))
    student_origin = dict(zip(student.blocks, student.origin))
    copied = []
    for path, _ in nnx.to_flat_state(nnx.state(student, WEIGHTS)):
        address = f"{path[0]}.{path[1]}" if len(path) > 1 else None
        if address in student_origin:
            group, index = to_teacher[student_origin[address]].rsplit(".", 1)
            teacher_path = (group, int(index)) + tuple(path[2:])
        else:
            teacher_path = path
        copied.append((path, teacher_weights[teacher_path]))
    nnx.update(student, nnx.from_flat_state(copied))
    return student
