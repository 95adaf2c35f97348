"""Design-space search: which system should we build? A space of options, a fast numeric core that equals the
full planner, sweeps with Pareto fronts, and the reasons each rejected point fails."""
