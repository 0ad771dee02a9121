#!/bin/sh
# Runs once, when the PostgreSQL volume is first created: a second database for MLflow.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -c "CREATE DATABASE \"${MLFLOW_DB:-mlflow}\";"
