"""Knowledge distillation from a teacher during prune, dress and cpt (docs/TRAINING.md, Distillation).

kd.py: the forward-KL loss per token (full vocabulary or top-k + the rest) and its plain reference;
teacher.py: which teacher a run uses (pre-flight checks) and how it runs; distiller.py: the trainer's hook.
"""
from megadrp.distill.distiller import Distiller, make_distiller
from megadrp.distill.kd import kd_per_token, kd_reference
from megadrp.distill.teacher import FrozenTeacher, SelfTeacher, TeacherSpec, resolve_teacher

__all__ = ["Distiller", "FrozenTeacher", "SelfTeacher", "TeacherSpec", "kd_per_token", "kd_reference",
           "make_distiller", "resolve_teacher"]
