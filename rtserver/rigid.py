"""Rigid-body transforms in world space (RAS+, mm): the one convention of the project.

Six parameters ``(trans_x, trans_y, trans_z, rot_x, rot_y, rot_z)``, translations in mm and
rotations in radians, define the 4x4 matrix

    ``M = T(c + t) @ Rz(rot_z) @ Ry(rot_y) @ Rx(rot_x) @ T(-c)``

where ``c`` is the rotation centre (the world coordinates of the centre of the volume's
voxel grid) and ``t = (trans_x, trans_y, trans_z)``. Rotations are applied about x first,
then y, then z (right-handed, counter-clockwise looking down the axis towards the origin),
and ``t`` is the displacement of the centre.

``M`` maps a point's world coordinates in the reference volume to its world coordinates in
the moved volume: the head's motion. A moved volume ``V`` therefore satisfies
``V(M @ x) = reference(x)``; ``inv(M)`` takes the moved volume back to the reference.
The simulator plants motion with this convention and the motion corrector estimates it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: DICOM patient coordinates (LPS) to NIfTI world coordinates (RAS); its own inverse.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

PARAMETER_NAMES = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
#: Radius of the sphere used to turn rotations into mm for framewise displacement.
FD_RADIUS_MM = 50.0


def rotation_matrix(rot_x: float, rot_y: float, rot_z: float) -> np.ndarray:
    """The 3x3 rotation ``Rz @ Ry @ Rx`` (radians)."""
    cx, sx = np.cos(rot_x), np.sin(rot_x)
    cy, sy = np.cos(rot_y), np.sin(rot_y)
    cz, sz = np.cos(rot_z), np.sin(rot_z)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def params_to_matrix(params: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The 4x4 world-space matrix of six rigid parameters about ``centre`` (mm)."""
    params = np.asarray(params, dtype=np.float64)
    centre = np.asarray(centre, dtype=np.float64)
    rotation = rotation_matrix(*params[3:])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre + params[:3] - rotation @ centre
    return matrix


def matrix_to_params(matrix: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The six rigid parameters of a 4x4 world-space matrix about ``centre`` (mm).

    Inverse of :func:`params_to_matrix` for rotations below 90 degrees about y.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    centre = np.asarray(centre, dtype=np.float64)
    rotation = matrix[:3, :3]
    rot_y = np.arcsin(np.clip(-rotation[2, 0], -1.0, 1.0))
    rot_x = np.arctan2(rotation[2, 1], rotation[2, 2])
    rot_z = np.arctan2(rotation[1, 0], rotation[0, 0])
    translation = matrix[:3, 3] + rotation @ centre - centre
    return np.array([*translation, rot_x, rot_y, rot_z])


def grid_centre(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm) of the centre of a voxel grid."""
    ijk = (np.asarray(shape[:3], dtype=np.float64) - 1.0) / 2.0
    return np.asarray(affine, dtype=np.float64)[:3, :3] @ ijk + np.asarray(affine)[:3, 3]


def framewise_displacement(previous: np.ndarray, current: np.ndarray,
                           radius: float = FD_RADIUS_MM) -> float:
    """Framewise displacement (Power et al., 2012) between two parameter sets.

    The sum of absolute translation differences (mm) and absolute rotation differences
    (radians) turned into arc lengths on a sphere of ``radius`` mm.
    """
    delta = np.abs(np.asarray(current, dtype=np.float64) - np.asarray(previous, np.float64))
    return float(delta[:3].sum() + radius * delta[3:].sum())


def voxel_mapping(matrix: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The 4x4 voxel-to-voxel matrix of a world-space transform on one grid.

    ``inv(affine) @ matrix @ affine``: reference voxel indices to moved-volume voxel indices.
    """
    affine = np.asarray(affine, dtype=np.float64)
    return np.linalg.inv(affine) @ matrix @ affine


def read_afni_matrices(path: str | Path) -> tuple[list[np.ndarray], list[int]]:
    """AFNI 3dvolreg motion matrices as 4x4 world (RAS, mm) matrices of this convention.

    ``3dvolreg -1Dmatrix_save`` writes one row of 12 numbers per volume: the 3x4 matrix
    from base (reference) to input (volume) coordinates, in DICOM (LPS) order. Converted
    to RAS, that is the ``M`` of this module (reference -> volume), so the result can be
    compared with the ``_desc-hmc_xfm.tsv`` this project writes.

    Parameters
    ----------
    path : str or Path
        The ``.aff12.1D`` file.

    Returns
    -------
    matrices : list of numpy.ndarray
        The rigid matrices, in file order.
    refused : list of int
        0-based rows whose 3x3 part is not a rotation (orthonormal with determinant +1,
        within 1e-4): not rigid motions, left out of ``matrices``.
    """
    matrices, refused = [], []
    for row, values in enumerate(np.loadtxt(path, ndmin=2)):
        matrix = np.eye(4)
        matrix[:3] = values.reshape(3, 4)
        rotation = matrix[:3, :3]
        if (np.abs(rotation.T @ rotation - np.eye(3)).max() > 1e-4
                or abs(np.linalg.det(rotation) - 1.0) > 1e-4):
            refused.append(row)
            continue
        matrices.append(LPS_TO_RAS @ matrix @ LPS_TO_RAS)
    return matrices, refused
