-- A second database for the Prefect server beside MLflow's.
CREATE DATABASE prefect;
