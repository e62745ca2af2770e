-- The registry keeps its schemas in PostgreSQL so they survive restarts.
CREATE DATABASE apicurio OWNER keel;
