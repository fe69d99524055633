"""Quantum core of qsm-gym: pure JAX functions on (..., n, n) arrays, no gymnasium import.

Modules:
    operators   spin (any j), ladder/Fock operators, spin coherent states.
    lindblad    column-stacking vectorisation and Lindblad superoperators.
    propagators piecewise-constant propagators (unitary and Lindblad) and their exact
                parameter derivatives (Frechet derivative of expm via a block matrix).
    qfi         quantum Fisher information: pure states and the SLD formula for mixed states.
    qutip_reference  the same model definitions evaluated with qutip.sesolve / mesolve
                (tests and benchmarks only, never on the hot path).

Precision: complex128 is required (QFI grows like t^2 and the SLD formula divides by small
eigenvalues), so ``ensure_x64()`` is called by every env constructor. Importing this package
changes no JAX setting.
"""

from qsmgym.physics.precision import ensure_x64
from qsmgym.physics.operators import (
    basis,
    destroy,
    number,
    spin_coherent_state,
    spin_dimension,
    spin_operators,
    spin_axis,
)
from qsmgym.physics.lindblad import dissipator, liouvillian, spost, spre, unvec, vec
from qsmgym.physics.propagators import (
    expm_with_derivative,
    lindblad_propagator,
    lindblad_propagator_with_derivative,
    unitary_propagator,
    unitary_propagator_with_derivative,
)
from qsmgym.physics.qfi import qfi_pure, qfi_sld

__all__ = [
    "basis",
    "destroy",
    "dissipator",
    "ensure_x64",
    "expm_with_derivative",
    "liouvillian",
    "lindblad_propagator",
    "lindblad_propagator_with_derivative",
    "number",
    "qfi_pure",
    "qfi_sld",
    "spin_axis",
    "spin_coherent_state",
    "spin_dimension",
    "spin_operators",
    "spost",
    "spre",
    "unitary_propagator",
    "unitary_propagator_with_derivative",
    "unvec",
    "vec",
]
