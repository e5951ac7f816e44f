"""The exchange boundary: signing, the REST client, its transports and its errors
(the simulator that stands in for the exchange is ``killswitch.simulator``)."""
