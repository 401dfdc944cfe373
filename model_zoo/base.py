"""What every zoo model shares: the protocol's forward pass, a registry name and the drop rule."""

from __future__ import annotations

from practise_jax.protocol import ResidualNetwork


class ZooModel(ResidualNetwork):
    """A zoo family: `practise_jax.ResidualNetwork` plus ``model_name`` (its registry name).

    ``droppable`` follows the reference: every block but the first of a stage
    (PRACTISE_SPEC.md section 2). Statically dropped blocks are
    `practise_jax.protocol.DroppedBlock`s (see `practise_jax.surgery.drop`).
    """

    model_name: str = "model"
