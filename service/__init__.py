"""The recommender service: REST API, PostgreSQL storage, training worker and admin dashboard."""
