"""The exchange boundary: signing, the REST client, its errors, and the simulator."""
