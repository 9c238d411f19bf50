"""Training jobs outside the API: the PostgreSQL-backed queue, schedules, the activation gate and the
execution of one job. The process that runs them is ``service.worker``."""
