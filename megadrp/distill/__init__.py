"""Knowledge distillation from a teacher during prune, dress and cpt (docs/TRAINING.md, Distillation).

kd.py: the forward-KL loss per token (full vocabulary or top-k + the rest) and its plain reference;
teacher.py: how the teacher runs (which one, pre-flight resolves: megadrp.trainer.build); distiller.py: the
trainer's hook; source_reference.py: DRO's initial reference losses measured on the source.
"""
from megadrp.distill.distiller import Distiller, make_distiller
from megadrp.distill.kd import kd_per_token, kd_reference
from megadrp.distill.teacher import FrozenTeacher, SelfTeacher

__all__ = ["Distiller", "FrozenTeacher", "SelfTeacher", "kd_per_token", "kd_reference", "make_distiller"]
