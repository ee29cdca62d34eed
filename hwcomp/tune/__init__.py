"""Tuning: MetaSchedule search into the per-target database, default schedules as baseline.

``search`` runs MetaSchedule into the per-target database; ``baseline`` records hwcomp's
default schedules first, as the time each task must beat.
"""
