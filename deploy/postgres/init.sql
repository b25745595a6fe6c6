-- Each service with a PostgreSQL read model gets its own database (lifecycle is POSTGRES_DB).
CREATE DATABASE symbi_audit;
